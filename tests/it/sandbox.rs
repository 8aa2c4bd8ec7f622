//! The real binary inside the systemd unit's sandbox, as far as it can be built without systemd.
//!
//! `AUTH0_RUDDERSTACK_SANDBOX` names a wrapper (CI sets it to `.ci/sandbox`) that runs a command under the
//! unit's system call filter and seccomp restrictions, read-only file system, private /tmp and /dev,
//! dropped capabilities, an unprivileged user and umask 077, with a directory as the state directory and
//! files as credentials. These tests run `sync` through it against the fakes and check that every entry
//! still arrives. They are marked ignored, so that a plain `cargo test` on a machine without bubblewrap lists
//! them as not run instead of passing them unrun; `.ci/run` runs them with `-- --ignored`, and asked to run
//! without the wrapper, they fail.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::support::app::{App, bin, run_bounded, text, wait_until};
use crate::support::{fixture_pairs_rekeyed, start_fakes, strip_ids};

const WRAPPER_VAR: &str = "AUTH0_RUDDERSTACK_SANDBOX";
/// Another build of the daemon to run in the sandbox instead of this one: CI points it at the binary in the
/// Debian package, so that the optimized, stripped build is tried too.
const BINARY_VAR: &str = "AUTH0_RUDDERSTACK_SANDBOX_BINARY";
/// Where the unit's `LoadCredential=` puts the config (`%d`), and the wrapper too.
const CREDENTIALS: &str = "/run/credentials/auth0-rudderstack.service";
/// The unit's `StateDirectory=`.
const STATE_DIR: &str = "/var/lib/auth0-rudderstack";
/// bwrap's exit status for a program killed by SIGSYS: a call outside `SystemCallFilter=`.
const KILLED_BY_SIGSYS: i32 = 128 + 31;

/// The wrapper; a test asked to run without it fails, saying what is missing.
fn wrapper(test: &str) -> Option<PathBuf> {
    match std::env::var_os(WRAPPER_VAR) {
        Some(w) if !w.is_empty() => Some(PathBuf::from(w)),
        _ => panic!(
            "{test}: {WRAPPER_VAR} is not set. It names the wrapper that builds the systemd unit's sandbox with \
             bubblewrap and seccomp (.ci/sandbox, which needs the bubblewrap and python3-seccomp packages); \
             .ci/run sets it and runs these tests with `cargo test --test it sandbox:: -- --ignored`."
        ),
    }
}

/// The daemon to run: [`BINARY_VAR`] or the binary cargo built for these tests.
fn daemon() -> PathBuf {
    match std::env::var_os(BINARY_VAR) {
        Some(b) if !b.is_empty() => PathBuf::from(b),
        _ => PathBuf::from(bin()),
    }
}

/// `wrapper --state STATE --credential config.toml:CONFIG -- PROGRAM ARGS...`, with the output piped.
fn sandboxed(
    wrapper: &Path,
    state: &Path,
    config: Option<&Path>,
    program: &Path,
    args: &[&str],
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(wrapper);
    cmd.arg("--state").arg(state);
    if let Some(config) = config {
        let mut credential = std::ffi::OsString::from("config.toml:");
        credential.push(config);
        cmd.arg("--credential").arg(credential);
    }
    cmd.arg("--").arg(program).args(args);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    cmd
}

/// An app whose config reads like the packaged one under the unit: the fakes named as `localhost` (so the
/// name goes through the C library's resolver inside the sandbox) and a relative state path, which
/// resolves in the working directory, the state directory.
fn packaged_like_app(auth0_url: &str, rudderstack_url: &str) -> (App, PathBuf) {
    let localhost = |url: &str| url.replacen("127.0.0.1", "localhost", 1);
    let mut app = App::with_urls(&localhost(auth0_url), &localhost(rudderstack_url));
    app.set("state", "path", "auth0-rudderstack.db");
    let state = app.dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    (app, state)
}

/// Under the unit's restrictions `sync` fetches every page, stores, transforms and delivers every entry
/// exactly as outside, keeps its state in the state directory with owner-only permissions, and `status`
/// reads that state back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the systemd unit's sandbox (AUTH0_RUDDERSTACK_SANDBOX); .ci/run runs it"]
async fn sync_delivers_every_entry_inside_the_units_sandbox() {
    let Some(wrapper) = wrapper("sync_delivers_every_entry_inside_the_units_sandbox") else { return };
    let (auth0, rudder) = start_fakes().await;
    let (fixtures, expected) = fixture_pairs_rekeyed(&auth0);
    auth0.push(fixtures.clone());
    // More than a few pages, so that the cursor moves several times inside the sandbox.
    let synthetic = auth0.push_synthetic(358);
    let (app, state) = packaged_like_app(&auth0.url(), &rudder.url());
    let config = format!("{CREDENTIALS}/config.toml");
    let daemon = daemon();
    eprintln!("running {} in the sandbox", daemon.display());

    let cmd = sandboxed(&wrapper, &state, Some(&app.config_path()), &daemon, &["--config", &config, "sync"]);
    let out = run_bounded(cmd, Duration::from_secs(120)).await;
    assert_eq!(out.status.code(), Some(0), "sync in the sandbox failed: {}", text(&out));

    let events = rudder.events();
    assert_eq!(events.len(), fixtures.len() + synthetic.len(), "{}", text(&out));
    for (i, (event, want)) in events.iter().zip(&expected).enumerate() {
        assert_eq!(strip_ids(event), strip_ids(want), "event {i} differs from RudderStack's transformer");
    }
    let sent: Vec<&Value> = events[fixtures.len()..].iter().map(|e| &e["properties"]["log_id"]).collect();
    let pushed: Vec<&Value> = synthetic.iter().map(|e| &e["log_id"]).collect();
    assert_eq!(sent, pushed, "the synthetic entries arrive once each, in order");

    // The state went to the state directory (nowhere else is writable), and UMask=0077 kept it private.
    let db = state.join("auth0-rudderstack.db");
    let mode =
        std::fs::metadata(&db).unwrap_or_else(|e| panic!("{}: {e}", db.display())).permissions().mode();
    assert_eq!(mode & 0o077, 0, "the state database is {mode:o}, readable by others");

    let cmd = sandboxed(
        &wrapper,
        &state,
        Some(&app.config_path()),
        &daemon,
        &["--config", &config, "status", "--json"],
    );
    let out = run_bounded(cmd, Duration::from_secs(30)).await;
    assert_eq!(out.status.code(), Some(0), "status in the sandbox failed: {}", text(&out));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(status["outbox_depth"], 0);
    assert_eq!(status["dead_letters"], 0);
    assert_eq!(status["cursor"], synthetic.last().unwrap()["log_id"]);
}

/// The wrapper is not a no-op: a call the filter removes (`setpriority`, in `@resources`) kills the program
/// with SIGSYS, the system is read-only but for the state directory, the program is not root, and the
/// umask is 077. Without this, a wrapper that ran the daemon unconfined would pass the test above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the systemd unit's sandbox (AUTH0_RUDDERSTACK_SANDBOX); .ci/run runs it"]
async fn the_sandbox_kills_a_forbidden_call_and_allows_writes_only_to_the_state() {
    let Some(wrapper) = wrapper("the_sandbox_kills_a_forbidden_call_and_allows_writes_only_to_the_state")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();

    let cmd = sandboxed(&wrapper, &state, None, Path::new("/usr/bin/nice"), &["-n", "5", "/bin/true"]);
    let out = run_bounded(cmd, Duration::from_secs(30)).await;
    assert_eq!(out.status.code(), Some(KILLED_BY_SIGSYS), "nice must die of SIGSYS: {}", text(&out));

    // A name no other run uses, to look for on the host afterwards.
    let probe = format!("/var/tmp/auth0-rudderstack-probe-{}", std::process::id());
    let script = format!(
        "umask; id -u; \
         touch {STATE_DIR}/written && echo state-writable; \
         touch /etc/auth0-rudderstack-probe 2>/dev/null && echo etc-writable; \
         touch {probe} && echo var-tmp-writable; \
         exit 0"
    );
    let cmd = sandboxed(&wrapper, &state, None, Path::new("/bin/sh"), &["-c", &script]);
    let out = run_bounded(cmd, Duration::from_secs(30)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"0077"), "{}", text(&out));
    assert_ne!(lines.get(1), Some(&"0"), "the program runs as root: {}", text(&out));
    assert!(lines.contains(&"state-writable"), "{}", text(&out));
    assert!(!lines.contains(&"etc-writable"), "/etc is writable in the sandbox: {}", text(&out));
    assert!(lines.contains(&"var-tmp-writable"), "{}", text(&out));
    assert!(state.join("written").exists(), "the state directory is not the one given");
    assert!(!Path::new(&probe).exists(), "/var/tmp is the host's, not a private one");
}

/// Under the unit's restrictions the daemon's own paths work too: `run` starts (the outbox watcher's inotify,
/// the reporter, the signal handlers), delivers every entry, polls again and delivers what came later, and is
/// still running at the end. A system call outside the filter would have killed it with SIGSYS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the systemd unit's sandbox (AUTH0_RUDDERSTACK_SANDBOX); .ci/run runs it"]
async fn run_delivers_new_entries_and_keeps_running_inside_the_units_sandbox() {
    let Some(wrapper) = wrapper("run_delivers_new_entries_and_keeps_running_inside_the_units_sandbox") else {
        return;
    };
    let (auth0, rudder) = start_fakes().await;
    let first = auth0.push_synthetic(120);
    let (mut app, state) = packaged_like_app(&auth0.url(), &rudder.url());
    app.set("auth0", "poll_interval", "1s");
    let config = format!("{CREDENTIALS}/config.toml");
    let mut cmd =
        sandboxed(&wrapper, &state, Some(&app.config_path()), &daemon(), &["--config", &config, "run"]);
    // Its log goes to a file, so that a full pipe can never stall it.
    let log_path = app.dir.path().join("sandboxed-run.log");
    cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&log_path).unwrap());
    let mut child = cmd.spawn().expect("start the sandbox");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let arrived = wait_until(Duration::from_secs(60), || rudder.event_count() >= first.len()).await;
    assert!(arrived, "{} of {} events; log:\n{}", rudder.event_count(), first.len(), log());
    let later = auth0.push_synthetic(30);
    let total = first.len() + later.len();
    let arrived = wait_until(Duration::from_secs(60), || rudder.event_count() >= total).await;
    assert!(arrived, "{} of {total} events; log:\n{}", rudder.event_count(), log());

    let ended = child.try_wait().expect("wait");
    assert!(ended.is_none(), "run ended inside the sandbox ({ended:?}); log:\n{}", log());
    let sent: Vec<Value> = rudder.events().iter().map(|e| e["properties"]["log_id"].clone()).collect();
    let pushed: Vec<Value> = first.iter().chain(&later).map(|e| e["log_id"].clone()).collect();
    assert_eq!(sent, pushed, "every entry once, in order");
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
}
