//! Drive the real binary: a config file in a temp dir pointing at the fakes, and helpers to run commands
//! with a bounded wait.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tempfile::TempDir;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_auth0-rudderstack")
}

/// A test installation: a temp dir with `config.toml` and the state database.
pub struct App {
    /// Keeps the directory alive.
    pub dir: TempDir,
    /// The config as a TOML table; `write()` saves it.
    pub config: toml::Table,
}

/// The secrets every test installation uses; secret-leak tests search output for them.
pub const CLIENT_ID: &str = "test-client-id";
/// See [`CLIENT_ID`].
pub const CLIENT_SECRET: &str = "s3cr3t-client-secret-value-0123456789";
/// See [`CLIENT_ID`].
pub const WRITE_KEY: &str = "wk-2Zt5Vh7Qm9PbRx3LsN8cYd1FgJ4";
use super::fake_auth0::{DOMAIN, FakeAuth0};
use super::fake_rudderstack::FakeRudderStack;

/// The `[rudderstack]`, `[state]` and `[retry]` sections every test config starts from: the data plane, a
/// state file in the test's directory, and fast retry timings.
fn common_sections(rudderstack_url: &str, db: &std::path::Path) -> String {
    format!(
        r#"
[rudderstack]
data_plane_url = "{rudderstack_url}"
write_key = "{WRITE_KEY}"
timeout = "5s"

[state]
path = "{db}"

[retry]
initial_backoff = "20ms"
max_backoff = "200ms"
sync_give_up_after = "20s"
"#,
        db = db.display()
    )
}

impl App {
    /// A config pointing at the two fakes, with fast test timings.
    pub fn new(auth0: &FakeAuth0, rudderstack: &FakeRudderStack) -> App {
        App::with_urls(&auth0.url(), &rudderstack.url())
    }

    /// A config pointing at an Auth0 base URL and a RudderStack data plane URL, with fast test timings.
    /// `poll_interval` is always set, so no test depends on its default (`"auto"`, which was `"30s"` before):
    /// the tests of `"auto"` (`poll::`) remove it on purpose.
    pub fn with_urls(auth0_url: &str, rudderstack_url: &str) -> App {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("state.db");
        let text = format!(
            r#"
[auth0]
domain = "{DOMAIN}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
base_url = "{auth0_url}"
start = "oldest"
poll_interval = "200ms"
max_requests_per_second = 1000.0
timeout = "5s"
{}"#,
            common_sections(rudderstack_url, &db)
        );
        let config: toml::Table = toml::from_str(&text).unwrap();
        let app = App { dir, config };
        app.write();
        app
    }

    /// A config with several `[[tenant]]` tables, each with the test timings, and a default `[rudderstack]`.
    pub fn with_tenants(tenants: &[TenantSpec], rudderstack_url: &str) -> App {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("state.db");
        let mut config: toml::Table = toml::from_str(&common_sections(rudderstack_url, &db)).unwrap();
        let list: Vec<toml::Value> = tenants.iter().map(|t| toml::Value::Table(t.table())).collect();
        config.insert("tenant".into(), toml::Value::Array(list));
        let app = App { dir, config };
        app.write();
        app
    }

    /// Set `key` of the `i`th `[[tenant]]` (from 0) and save.
    pub fn set_tenant(&mut self, i: usize, key: &str, value: impl Into<toml::Value>) -> &mut App {
        let t = self.config["tenant"].as_array_mut().unwrap()[i].as_table_mut().unwrap();
        t.insert(key.to_string(), value.into());
        self.write();
        self
    }

    /// Remove `key` of the `i`th `[[tenant]]` (from 0) and save.
    pub fn unset_tenant(&mut self, i: usize, key: &str) -> &mut App {
        let t = self.config["tenant"].as_array_mut().unwrap()[i].as_table_mut().unwrap();
        t.remove(key);
        self.write();
        self
    }

    /// Remove the `i`th `[[tenant]]` and save.
    pub fn remove_tenant(&mut self, i: usize) -> &mut App {
        self.config["tenant"].as_array_mut().unwrap().remove(i);
        self.write();
        self
    }

    /// Set `section.key` and save.
    pub fn set(&mut self, section: &str, key: &str, value: impl Into<toml::Value>) -> &mut App {
        self.config
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .unwrap()
            .insert(key.to_string(), value.into());
        self.write();
        self
    }

    /// Remove `section.key` and save.
    pub fn unset(&mut self, section: &str, key: &str) -> &mut App {
        if let Some(t) = self.config.get_mut(section).and_then(|v| v.as_table_mut()) {
            t.remove(key);
        }
        self.write();
        self
    }

    fn write(&self) {
        let path = self.config_path();
        std::fs::write(&path, toml::to_string(&self.config).unwrap()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }

    /// The config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// The state database.
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("state.db")
    }

    /// A command for the binary with this config.
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(bin());
        cmd.arg("--config").arg(self.config_path()).args(args);
        cmd.env_remove("AUTH0_CLIENT_SECRET").env_remove("RUDDERSTACK_WRITE_KEY").env_remove("RUST_LOG");
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        cmd
    }

    /// Start `run` in the background with its output going to `run.log` in the app's directory, so that a
    /// long-running daemon can never block on a full pipe.
    pub fn spawn_run(&self) -> tokio::process::Child {
        let log = std::fs::File::create(self.dir.path().join("run.log")).unwrap();
        let mut cmd = self.command(&["run"]);
        cmd.stdout(Stdio::from(log.try_clone().unwrap())).stderr(Stdio::from(log));
        cmd.spawn().expect("spawn run")
    }

    /// What `spawn_run` wrote so far.
    pub fn run_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("run.log")).unwrap_or_default()
    }

    /// Run a command to completion, failing the test if it takes longer than `limit`.
    pub async fn run(&self, args: &[&str], limit: Duration) -> Output {
        run_bounded(self.command(args), limit).await
    }

    /// `sync` with a bounded wait.
    pub async fn sync(&self) -> Output {
        self.run(&["sync"], Duration::from_secs(60)).await
    }

    /// `status --json`, parsed.
    pub async fn status(&self) -> serde_json::Value {
        let out = self.run(&["status", "--json"], Duration::from_secs(20)).await;
        assert!(out.status.success(), "status failed: {}", text(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {}", text(&out)))
    }
}

/// One `[[tenant]]` of a test config.
#[derive(Debug, Clone)]
pub struct TenantSpec {
    /// Its domain.
    pub domain: String,
    /// Its client id.
    pub client_id: String,
    /// Its client secret.
    pub client_secret: String,
    /// Its Auth0 base URL (a fake).
    pub base_url: String,
    /// Its own destination (URL and write key), if any.
    pub rudderstack: Option<(String, String)>,
}

impl TenantSpec {
    /// A tenant served by a fake Auth0's tenant handle.
    pub fn of(tenant: &super::fake_auth0::Tenant, base_url: &str) -> TenantSpec {
        TenantSpec {
            domain: tenant.domain(),
            client_id: tenant.client_id(),
            client_secret: tenant.client_secret(),
            base_url: base_url.to_string(),
            rudderstack: None,
        }
    }

    /// With its own destination.
    pub fn sending_to(mut self, url: &str, write_key: &str) -> TenantSpec {
        self.rudderstack = Some((url.to_string(), write_key.to_string()));
        self
    }

    fn table(&self) -> toml::Table {
        let mut t: toml::Table = toml::from_str(&format!(
            r#"
domain = "{}"
client_id = "{}"
client_secret = "{}"
base_url = "{}"
start = "oldest"
poll_interval = "200ms"
max_requests_per_second = 1000.0
timeout = "5s"
"#,
            self.domain, self.client_id, self.client_secret, self.base_url
        ))
        .unwrap();
        if let Some((url, key)) = &self.rudderstack {
            let mut r = toml::Table::new();
            r.insert("data_plane_url".into(), url.clone().into());
            r.insert("write_key".into(), key.clone().into());
            t.insert("rudderstack".into(), toml::Value::Table(r));
        }
        t
    }
}

/// The most resident memory the daemon may ever hold, whatever an upstream sends or an input holds.
pub const MAX_PEAK_RSS_KIB: u64 = 64 * 1024;

/// The peak resident set of a live process, in KiB (`VmHWM` in `/proc/<pid>/status`).
pub fn peak_rss_kib(pid: u32) -> u64 {
    peak_rss_kib_if_alive(pid).expect("a VmHWM line in /proc/<pid>/status")
}

/// [`peak_rss_kib`], or `None` once the process has exited (its `VmHWM` goes with its memory).
pub fn peak_rss_kib_if_alive(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Run a command to completion within `limit`.
pub async fn run_bounded(mut cmd: tokio::process::Command, limit: Duration) -> Output {
    let child = cmd.spawn().expect("spawn the binary");
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(out) => out.expect("wait for the binary"),
        Err(_) => panic!("the command did not finish within {limit:?}"),
    }
}

/// Stdout and stderr together, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Wait until `f` holds, polling every 20 ms, for at most `limit`.
pub async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// log_id → messageId of every event `transform --domain DOMAIN FILE` prints: the ids live delivery must use.
pub async fn transform_ids(domain: &str, file: &Path) -> std::collections::HashMap<String, String> {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.args(["transform", "--domain", domain]).arg(file).kill_on_drop(true);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = run_bounded(cmd, Duration::from_secs(60)).await;
    assert!(out.status.success(), "{}", text(&out));
    let events: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    events
        .iter()
        .map(|e| {
            (
                e["properties"]["log_id"].as_str().unwrap().to_string(),
                e["messageId"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Send SIGTERM to a daemon and wait, at most `limit`, for it to exit; its status and how long it took.
pub async fn sigterm_within(
    mut child: tokio::process::Child,
    limit: Duration,
) -> (std::process::ExitStatus, Duration) {
    let pid = child.id().expect("the child is running");
    let started = std::time::Instant::now();
    // The crate forbids unsafe code, so the signal goes through kill(1) rather than libc.
    let sent = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
    assert!(sent.success(), "kill -TERM {pid} failed");
    let status = tokio::time::timeout(limit, child.wait())
        .await
        .unwrap_or_else(|_| panic!("the daemon did not exit within {limit:?} of SIGTERM"))
        .unwrap();
    (status, started.elapsed())
}

/// [`sigterm_within`] with a generous limit, for tests that check only how the daemon ended.
pub async fn sigterm(child: tokio::process::Child) -> std::process::ExitStatus {
    sigterm_within(child, Duration::from_secs(20)).await.0
}
