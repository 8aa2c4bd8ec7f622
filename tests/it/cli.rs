//! The command line as operators script against it: exit codes, and messages that name the file and key.

use std::time::Duration;

use crate::support::app::{App, CLIENT_SECRET, WRITE_KEY, text};

fn text_of(out: &std::process::Output) -> String {
    text(out)
}

const LIMIT: Duration = Duration::from_secs(20);

fn unreachable_app() -> App {
    // Nothing listens on port 9 of loopback; these tests never get as far as the network.
    App::with_urls("http://127.0.0.1:9", "http://127.0.0.1:9")
}

async fn status_with_config(app: &App, body: &str) -> std::process::Output {
    std::fs::write(app.config_path(), body).unwrap();
    app.run(&["status"], LIMIT).await
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A file that is not TOML exits 2 and names the file.
#[tokio::test]
async fn malformed_toml_exits_2_and_names_the_file() {
    let app = unreachable_app();
    let out = status_with_config(&app, "[auth0\ndomain = 1").await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains(&app.config_path().display().to_string()), "{}", text(&out));
}

/// An unknown key exits 2 and names the key with its table and the file.
#[tokio::test]
async fn an_unknown_key_exits_2_and_names_the_key_and_the_file() {
    let mut app = unreachable_app();
    app.set("auth0", "poll_intervall", "30s");
    let out = app.run(&["status"], LIMIT).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = stderr(&out);
    assert!(err.contains("poll_intervall"), "{err}");
    assert!(err.contains("auth0"), "{err}");
    assert!(err.contains(&app.config_path().display().to_string()), "{err}");
}

/// A missing key exits 2 and names the dotted key.
#[tokio::test]
async fn a_missing_key_exits_2_and_names_the_dotted_key() {
    let mut app = unreachable_app();
    app.unset("auth0", "client_id");
    let out = app.run(&["status"], LIMIT).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("auth0.client_id"), "{}", text(&out));
}

/// A bad URL exits 2 and names the key.
#[tokio::test]
async fn a_bad_url_exits_2_and_names_the_key() {
    let mut app = unreachable_app();
    app.set("rudderstack", "data_plane_url", "not a url");
    let out = app.run(&["status"], LIMIT).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("rudderstack.data_plane_url"), "{}", text(&out));
}

/// A bad duration exits 2 and names the key.
#[tokio::test]
async fn a_bad_duration_exits_2_and_names_the_key() {
    let mut app = unreachable_app();
    app.set("auth0", "poll_interval", "every now and then");
    let out = app.run(&["status"], LIMIT).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("auth0.poll_interval"), "{}", text(&out));
}

/// A bad start value exits 2 and names the key.
#[tokio::test]
async fn a_bad_start_exits_2_and_names_the_key() {
    let mut app = unreachable_app();
    app.set("auth0", "start", "yesterday");
    let out = app.run(&["status"], LIMIT).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("auth0.start"), "{}", text(&out));
}

/// A missing config file exits 2 and names it.
#[tokio::test]
async fn a_missing_config_file_exits_2_and_names_it() {
    let app = unreachable_app();
    std::fs::remove_file(app.config_path()).unwrap();
    let out = app.run(&["status"], LIMIT).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains(&app.config_path().display().to_string()), "{}", text(&out));
}

/// A usage error (unknown subcommand) exits 2.
#[tokio::test]
async fn an_unknown_subcommand_exits_2() {
    let app = unreachable_app();
    let out = app.run(&["frobnicate"], LIMIT).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

/// A config file that holds a secret and is readable by others gets a warning that names it.
#[cfg(unix)]
#[tokio::test]
async fn a_world_readable_config_with_a_secret_gets_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let app = unreachable_app();
    std::fs::set_permissions(app.config_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = app.run(&["status"], LIMIT).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let err = stderr(&out);
    assert!(err.contains("holds a secret") && err.contains("chmod 600"), "{err}");

    std::fs::set_permissions(app.config_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = app.run(&["status"], LIMIT).await;
    assert!(!stderr(&out).contains("holds a secret"), "{}", text(&out));
}

/// Secrets may come from the environment instead of the file.
#[tokio::test]
async fn secrets_may_come_from_the_environment() {
    let mut app = unreachable_app();
    app.unset("auth0", "client_secret").unset("rudderstack", "write_key");
    let out = app.run(&["status"], LIMIT).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("AUTH0_CLIENT_SECRET"), "{}", text(&out));

    let mut cmd = app.command(&["status"]);
    cmd.env("AUTH0_CLIENT_SECRET", CLIENT_SECRET).env("RUDDERSTACK_WRITE_KEY", WRITE_KEY);
    let out = crate::support::app::run_bounded(cmd, LIMIT).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// `status` on a fresh installation says there is no state yet, creates nothing and exits 0.
#[tokio::test]
async fn status_on_a_fresh_installation_creates_nothing() {
    let app = unreachable_app();
    // Every name under the directory that holds the config and would hold the state (its lock included).
    let names = || {
        let mut names: Vec<String> = std::fs::read_dir(app.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = names();
    assert_eq!(app.db_path().parent(), Some(app.dir.path()));
    let v = app.status().await;
    assert_eq!(v["state_exists"], false);
    assert_eq!(v["outbox_depth"], 0);
    let out = app.run(&["metrics"], LIMIT).await;
    assert_eq!(out.status.code(), Some(0), "{}", text_of(&out));
    assert_eq!(names(), before);
}

/// The example config shipped in the repository is refused as it is (its placeholders would run against a
/// made-up tenant), naming the first placeholder's key; with real values in their place it parses, so it
/// cannot rot.
#[tokio::test]
async fn the_example_config_is_refused_until_its_placeholders_are_replaced() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    let app = unreachable_app();
    let out = status_with_config(&app, &text).await;
    assert_eq!(out.status.code(), Some(2), "{}", text_of(&out));
    let err = stderr(&out);
    assert!(err.contains("auth0.domain") && err.contains("placeholder"), "{err}");

    let filled = text
        .replace("example-tenant.us.auth0.com", "acme.eu.auth0.com")
        .replace("REPLACE_WITH_CLIENT_ID", "a-client-id")
        .replace("REPLACE_WITH_CLIENT_SECRET", "a-client-secret")
        .replace("REPLACE_WITH_WRITE_KEY", "a-write-key")
        .replace("example-dataplane.rudderstack.com", "acme-dataplane.rudderstack.com");
    let (config, _) = auth0_rudderstack::config::Config::parse(&filled, &example, |_: &str| None)
        .expect("the example with its placeholders filled in parses");
    assert_eq!(config.tenants[0].auth0.page_size, 100);
    assert_eq!(config.tenants[0].rudderstack.max_batch_bytes, 4_000_000);
    // And every placeholder on its own is caught.
    for (placeholder, key) in [
        ("REPLACE_WITH_CLIENT_ID", "auth0.client_id"),
        ("REPLACE_WITH_CLIENT_SECRET", "auth0.client_secret"),
        ("REPLACE_WITH_WRITE_KEY", "rudderstack.write_key"),
        ("example-dataplane.rudderstack.com", "rudderstack.data_plane_url"),
    ] {
        let one = filled.replace(
            match placeholder {
                "REPLACE_WITH_CLIENT_ID" => "a-client-id",
                "REPLACE_WITH_CLIENT_SECRET" => "a-client-secret",
                "REPLACE_WITH_WRITE_KEY" => "a-write-key",
                _ => "acme-dataplane.rudderstack.com",
            },
            placeholder,
        );
        let err = auth0_rudderstack::config::Config::parse(&one, &example, |_: &str| None).unwrap_err();
        assert_eq!(err.key(), key, "{err}");
    }
}

/// The README's configuration table and `config.example.toml` name the same keys, section by section (the
/// README promises that the example lists every key), and each key the example sets has the README's default.
#[test]
fn the_example_config_lists_every_key_of_the_readme_with_its_default() {
    use std::collections::BTreeMap;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let example = std::fs::read_to_string(root.join("config.example.toml")).unwrap();

    // README rows: | `section.key` / `other` | `default` | meaning |
    let table = readme.split("## Configuration").nth(1).expect("a Configuration section");
    let table = &table[..table.find("\n## ").unwrap_or(table.len())];
    let mut documented: BTreeMap<String, Option<String>> = BTreeMap::new();
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split(" | ").collect();
        let names: Vec<&str> =
            cells[0].trim_start_matches("| ").split(" / ").map(|n| n.trim_matches('`')).collect();
        let (section, first) = names[0].split_once('.').expect("section.key");
        // A default that is one literal in backticks; "required", "none" or prose otherwise.
        let default = cells[1]
            .strip_prefix('`')
            .and_then(|d| d.strip_suffix('`'))
            .filter(|d| !d.contains('`') && !d.contains('{'))
            .map(str::to_string);
        documented.insert(format!("{section}.{first}"), default.clone());
        for other in &names[1..] {
            documented.insert(format!("{section}.{other}"), default.clone());
        }
    }
    assert!(documented.len() >= 35, "the table was not read: {documented:?}");

    // Example lines: `[section]` or `# [section]`, then `key = value` or `# key = value`, up to the tenants.
    let mut listed: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in example.lines() {
        let (commented, bare) = match line.strip_prefix("# ") {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        if bare.starts_with("[[tenant]]") || bare.starts_with("Several tenants") {
            break;
        }
        if let Some(name) = bare.strip_prefix('[').and_then(|b| b.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let Some((key, value)) = bare.split_once(" = ") else { continue };
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            continue;
        }
        let value = value.split("  #").next().unwrap().trim().to_string();
        listed.insert(format!("{section}.{key}"), (!commented).then_some(value));
    }

    let only_readme: Vec<&String> = documented.keys().filter(|k| !listed.contains_key(*k)).collect();
    let only_example: Vec<&String> = listed.keys().filter(|k| !documented.contains_key(*k)).collect();
    assert!(
        only_readme.is_empty(),
        "keys in the README's table but not in config.example.toml: {only_readme:?}"
    );
    assert!(
        only_example.is_empty(),
        "keys in config.example.toml but not in the README's table: {only_example:?}"
    );
    let mut compared = 0;
    for (key, value) in &listed {
        if let (Some(value), Some(Some(default))) = (value, documented.get(key)) {
            assert_eq!(value, default, "{key}: the example sets {value}, the README's default is {default}");
            compared += 1;
        }
    }
    assert!(compared >= 20, "only {compared} defaults compared");
}

/// `--log-format json` writes one JSON object per log line, for log shippers.
#[cfg(unix)]
#[tokio::test]
async fn log_format_json_writes_one_json_object_per_line() {
    use std::os::unix::fs::PermissionsExt;
    let app = unreachable_app();
    // A readable secret makes the config loader log a warning.
    std::fs::set_permissions(app.config_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = app.run(&["--log-format", "json", "status"], LIMIT).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines");
    let mut messages = Vec::new();
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(v["level"], "WARN", "{line}");
        messages.push(v["fields"]["message"].as_str().unwrap().to_string());
    }
    assert!(messages.iter().any(|m| m.contains("holds a secret")), "{messages:?}");
}

/// A domain with an upper-case letter, in `[auth0]` or in a `[[tenant]]`, exits 2 naming the key and the file
/// and saying to write it in lower case; so does `transform --domain`. `--tenant` finds a tenant in any case.
#[tokio::test]
async fn a_domain_with_an_upper_case_letter_exits_2_and_says_to_write_it_in_lower_case() {
    let mut app = unreachable_app();
    app.set("auth0", "domain", "Plain.example.com");
    let out = app.run(&["status"], LIMIT).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = stderr(&out);
    assert!(err.contains("auth0.domain") && err.contains("lower case"), "{err}");
    assert!(err.contains("\"plain.example.com\"") && err.contains(&app.config_path().display().to_string()));

    let tenants = format!(
        "[rudderstack]\ndata_plane_url = \"http://127.0.0.1:9\"\nwrite_key = \"{WRITE_KEY}\"\n\
         [[tenant]]\ndomain = \"one.example.com\"\nclient_id = \"a\"\nclient_secret = \"{CLIENT_SECRET}\"\n\
         [[tenant]]\ndomain = \"plain.EXAMPLE.com\"\nclient_id = \"b\"\nclient_secret = \"{CLIENT_SECRET}\"\n"
    );
    let out = status_with_config(&app, &tenants).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = stderr(&out);
    assert!(err.contains("tenant[2].domain") && err.contains("lower case"), "{err}");

    let out = status_with_config(&app, &tenants.replace("plain.EXAMPLE.com", "plain.example.com")).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = app.run(&["status", "--tenant", "Plain.Example.com"], LIMIT).await;
    assert_eq!(out.status.code(), Some(0), "--tenant in another case finds the tenant: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("plain.example.com"), "{}", text(&out));

    let mut cmd = tokio::process::Command::new(crate::support::app::bin());
    cmd.args(["transform", "--domain", "Plain.example.com"]).kill_on_drop(true);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = crate::support::app::run_bounded(cmd, LIMIT).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = stderr(&out);
    assert!(err.contains("--domain") && err.contains("lower case"), "{err}");
}

/// `[privacy] hash` without a key (no `hash_key_file`, no `AUTH0_RUDDERSTACK_HASH_KEY`), with a key file that
/// is not there, or with a key shorter than 16 bytes, exits 2 naming `privacy.hash_key_file`, and never
/// shows the short key.
#[tokio::test]
async fn a_missing_or_short_hash_key_exits_2_naming_the_key() {
    let mut app = unreachable_app();
    app.set("privacy", "hash", vec!["email"]);
    let short = app.dir.path().join("short.key");
    std::fs::write(&short, "tooShortKey15by").unwrap();
    let absent = app.dir.path().join("absent.key");
    for file in [None, Some(&absent), Some(&short)] {
        match file {
            Some(f) => app.set("privacy", "hash_key_file", f.display().to_string()),
            None => app.unset("privacy", "hash_key_file"),
        };
        let mut cmd = app.command(&["status"]);
        cmd.env_remove("AUTH0_RUDDERSTACK_HASH_KEY");
        let out = crate::support::app::run_bounded(cmd, LIMIT).await;
        assert_eq!(out.status.code(), Some(2), "{file:?}: {}", text(&out));
        let err = stderr(&out);
        assert!(err.contains("privacy.hash_key_file"), "{file:?}: {err}");
        assert!(err.contains(&app.config_path().display().to_string()), "{file:?}: {err}");
        assert!(!err.contains("tooShortKey15by"), "{err}");
    }
    // A key of 16 bytes is enough.
    std::fs::write(&short, "aKeyOf16Bytes!!!").unwrap();
    let mut cmd = app.command(&["status"]);
    cmd.env_remove("AUTH0_RUDDERSTACK_HASH_KEY");
    let out = crate::support::app::run_bounded(cmd, LIMIT).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// `-c` defaults to `config.toml` in the working directory, or the file `AUTH0_RUDDERSTACK_CONFIG` names;
/// with neither, the missing `config.toml` exits 2 naming it.
#[tokio::test]
async fn the_config_is_config_toml_in_the_working_directory_or_the_one_the_environment_names() {
    let app = unreachable_app();
    let elsewhere = tempfile::tempdir().unwrap();
    let status = |dir: &std::path::Path, env: Option<&std::path::Path>| {
        let mut cmd = tokio::process::Command::new(crate::support::app::bin());
        cmd.arg("status").current_dir(dir).env_remove("AUTH0_RUDDERSTACK_CONFIG").env_remove("RUST_LOG");
        if let Some(path) = env {
            cmd.env("AUTH0_RUDDERSTACK_CONFIG", path);
        }
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).kill_on_drop(true);
        crate::support::app::run_bounded(cmd, LIMIT)
    };
    // The app's directory holds config.toml.
    let out = status(app.dir.path(), None).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("fake-tenant.example.com"), "{}", text(&out));
    // Elsewhere, the variable names it.
    let out = status(elsewhere.path(), Some(&app.config_path())).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("fake-tenant.example.com"), "{}", text(&out));
    // Elsewhere without it: no config.toml there.
    let out = status(elsewhere.path(), None).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("config.toml"), "{}", text(&out));
}

/// A `tls_ca_file` is read through a 16 MiB bound: a larger one (a sparse file here) exits 2 naming the key
/// and saying it is too large, in `[auth0]` and in `[rudderstack]` alike.
#[tokio::test]
async fn a_ca_bundle_over_16_mib_exits_2_naming_the_key() {
    let big = tempfile::tempdir().unwrap();
    let path = big.path().join("huge-ca.pem");
    std::fs::File::create(&path).unwrap().set_len((16 << 20) + 1).unwrap();
    for section in ["auth0", "rudderstack"] {
        let mut app = unreachable_app();
        app.set(section, "tls_ca_file", path.display().to_string());
        let out = app.run(&["status"], LIMIT).await;
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let err = stderr(&out);
        assert!(err.contains(&format!("{section}.tls_ca_file")) && err.contains("larger than"), "{err}");
    }
}
