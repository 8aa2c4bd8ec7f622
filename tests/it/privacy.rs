//! The privacy rules on every fixture entry and webhook edge case, through the transform: what reaches
//! RudderStack holds no hashed value in the clear and no full IPv4 address, differs from the unprotected event
//! only under the listed and IP keys, and depends on the hash key exactly as a keyed hash should.

use std::collections::HashSet;

use auth0_rudderstack::privacy::{Privacy, Rules};
use auth0_rudderstack::transform::transform_any;
use secrecy::SecretSlice;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::support::addresses;
use crate::support::fixtures::{self, TENANT};

/// The fields hashed in these tests.
const HASHED: [&str; 3] = ["email", "user_name", "name"];

/// Hash the usual identity fields and truncate IPs, under `key`.
fn privacy(key: &[u8]) -> Privacy {
    let rules = Rules { hash: HASHED.map(str::to_owned).to_vec(), truncate_ip: true, ..Rules::default() };
    Privacy::new(&rules, Some(SecretSlice::from(key.to_vec()))).expect("valid rules")
}

/// Every entry of the fixtures, as compact JSON text: the transform fixtures' entries, and each element of
/// each webhook edge case's body (split as upstream does: an array, a `{logs}` object, or one object).
fn entries() -> Vec<String> {
    let mut all = fixtures::corpus_entries();
    for (_, file) in fixtures::edge_case_files() {
        for input in file["input"].as_array().expect("input") {
            let Some(body) = input.pointer("/request/body").and_then(Value::as_str) else { continue };
            all.extend(fixtures::webhook_body_entries(body).unwrap_or_default());
        }
    }
    all
}

/// The event of an entry's text, when the transform gives one.
fn event(text: &str) -> Option<Value> {
    let raw = RawValue::from_string(text.to_owned()).expect("valid JSON");
    let event = transform_any(TENANT, &raw).ok()?;
    Some(serde_json::from_str(&event.json).expect("event is JSON"))
}

/// Each entry's event without and with privacy (entries without an event are skipped).
fn event_pairs(p: &Privacy) -> Vec<(String, Value, Value)> {
    let mut pairs = Vec::new();
    for text in entries() {
        let private = p.apply(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let Some(plain) = event(&text) else { continue };
        let protected = event(&private).expect("the rewritten entry gives an event too");
        pairs.push((text, plain, protected));
    }
    assert!(pairs.len() > 150, "only {} events", pairs.len());
    pairs
}

/// Whether `protected` is `plain` with IP addresses truncated: both strings, equal once every character an
/// address can hold is taken out, and holding no full address (by the independent scan of
/// `support::addresses`) while `plain` held one.
fn only_addresses_truncated(plain: &Value, protected: &Value) -> bool {
    let (Some(a), Some(b)) = (plain.as_str(), protected.as_str()) else { return false };
    let outside = |s: &str| {
        s.chars().filter(|c| !(c.is_ascii_hexdigit() || *c == '.' || *c == ':')).collect::<String>()
    };
    let full = |s: &str| addresses::find(s).iter().any(|x| addresses::full_address(x).is_some());
    outside(a) == outside(b) && full(a) && !full(b)
}

/// Split a JSON tree's string values into those under a hashed key and all others.
fn strings(value: &Value, under_hashed: bool, hashed: &mut Vec<String>, others: &mut HashSet<String>) {
    match value {
        Value::String(s) if under_hashed => hashed.push(s.clone()),
        Value::String(s) => {
            others.insert(s.clone());
        }
        Value::Array(items) => items.iter().for_each(|v| strings(v, under_hashed, hashed, others)),
        Value::Object(map) => {
            for (k, v) in map {
                strings(v, under_hashed || HASHED.contains(&k.as_str()), hashed, others);
            }
        }
        _ => {}
    }
}

/// No value of a hashed field reaches the event in the clear, and no email even as part of a longer string;
/// unless the same text stands elsewhere in the entry or the event, outside the hashed fields.
#[test]
fn no_hashed_value_appears_in_the_transformed_output() {
    let p = privacy(b"test-key-0123456789abcdef");
    let (mut checked, mut elsewhere) = (0, 0);
    for (text, plain, protected) in event_pairs(&p) {
        let input: Value = serde_json::from_str(&text).expect("JSON");
        let (mut hashed, mut allowed) = (Vec::new(), HashSet::new());
        strings(&input, false, &mut hashed, &mut allowed);
        // What the transform writes outside the hashed fields on its own (names, constants) is allowed too.
        strings(&plain, false, &mut Vec::new(), &mut allowed);
        let mut out_strings = HashSet::new();
        strings(&protected, false, &mut Vec::new(), &mut out_strings);
        for value in hashed.iter().filter(|v| !v.is_empty()) {
            let email = value.contains('@');
            let legitimate = if email {
                allowed.iter().any(|a| a.contains(value.as_str()))
            } else {
                allowed.contains(value)
            };
            if legitimate {
                elsewhere += 1;
                continue;
            }
            checked += 1;
            if email {
                let output = serde_json::to_string(&protected).expect("serialize");
                assert!(!output.contains(value.as_str()), "{value} leaked from {text}");
            } else {
                assert!(!out_strings.contains(value), "{value:?} leaked from {text}");
            }
        }
    }
    assert!(checked > 250, "only {checked} values checked");
    assert!(elsewhere * 10 < checked, "{elsewhere} of {checked} values also stand outside the hashed fields");
}

/// Every IPv4 address in `context.ip` and `context.request_ip` ends in `.0`.
#[test]
fn every_ipv4_context_ip_ends_in_zero() {
    let p = privacy(b"test-key-0123456789abcdef");
    let mut seen = 0;
    for (text, _, protected) in event_pairs(&p) {
        for key in ["ip", "request_ip"] {
            let Some(ip) = protected["context"][key].as_str() else { continue };
            if ip.parse::<std::net::Ipv4Addr>().is_ok() {
                assert!(ip.ends_with(".0"), "{key} {ip} from {text}");
                seen += 1;
            }
        }
    }
    assert!(seen > 200, "only {seen} IPv4 addresses seen");
}

/// Walk two event trees side by side and collect the paths (as key lists) where leaves differ.
fn differences(a: &Value, b: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys_x: Vec<&String> = x.keys().collect();
            let keys_y: Vec<&String> = y.keys().collect();
            assert_eq!(keys_x, keys_y, "different keys at {path:?}");
            for (k, v) in x {
                path.push(k.clone());
                differences(v, &y[k], path, out);
                path.pop();
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                path.push(format!("[{i}]"));
                differences(v, w, path, out);
                path.pop();
            }
        }
        _ if a != b => out.push(path.clone()),
        _ => {}
    }
}

/// The only paths where the protected event differs from the unprotected one end in a hashed key, or hold a
/// string whose IP addresses were truncated and nothing else; and the two ids, only for entries without a
/// string log_id, whose ids derive from the entry's bytes.
#[test]
fn the_output_differs_only_under_hashed_and_ip_keys() {
    let p = privacy(b"test-key-0123456789abcdef");
    let mut changed = 0;
    for (text, plain, protected) in event_pairs(&p) {
        let input: Value = serde_json::from_str(&text).expect("JSON");
        let log_id = input.get("log_id").or_else(|| input.pointer("/data/log_id"));
        let ids_from_bytes = !log_id.is_some_and(Value::is_string);
        let mut paths = Vec::new();
        differences(&plain, &protected, &mut Vec::new(), &mut paths);
        for path in &paths {
            let last = path.last().map(String::as_str).unwrap_or_default();
            let ids = matches!(last, "messageId" | "anonymousId") && path.len() == 1 && ids_from_bytes;
            let at = |v: &Value| {
                path.iter().fold(v.clone(), |v, k| {
                    match k.strip_prefix('[').and_then(|i| i.strip_suffix(']')) {
                        Some(i) => v[i.parse::<usize>().unwrap()].clone(),
                        None => v[k.as_str()].clone(),
                    }
                })
            };
            let truncated = only_addresses_truncated(&at(&plain), &at(&protected));
            assert!(HASHED.contains(&last) || truncated || ids, "{path:?} changed in {text}");
        }
        changed += paths.len();
    }
    assert!(changed > 500, "only {changed} values changed");
}

/// The same key gives byte-identical events twice; another key gives other hashes at every hashed path.
#[test]
fn the_same_key_repeats_and_another_key_gives_other_hashes() {
    let a = privacy(b"test-key-0123456789abcdef");
    let b = privacy(b"test-key-0123456789abcdeF");
    let mut compared = 0;
    for text in entries() {
        let once = a.apply(&text).expect("applies");
        let twice = a.apply(&text).expect("applies");
        assert_eq!(once, twice, "{text}");
        let other = b.apply(&text).expect("applies");
        let (Ok(x), Ok(y)) = (serde_json::from_str::<Value>(&once), serde_json::from_str::<Value>(&other))
        else {
            panic!("not JSON: {once} / {other}");
        };
        let mut paths = Vec::new();
        differences(&x, &y, &mut Vec::new(), &mut paths);
        let (mut hashed_a, mut hashed_b) = (Vec::new(), Vec::new());
        strings(&x, false, &mut hashed_a, &mut HashSet::new());
        strings(&y, false, &mut hashed_b, &mut HashSet::new());
        for (h, g) in hashed_a.iter().zip(&hashed_b) {
            assert_eq!(h.len(), 64, "{h} in {text}");
            assert_ne!(h, g, "{text}");
            compared += 1;
        }
        for path in &paths {
            assert!(path.iter().any(|k| HASHED.contains(&k.as_str())), "{path:?} differs in {text}");
        }
    }
    assert!(compared > 300, "only {compared} hashes compared");
}

// Through the real binary: the rules apply where entries enter, so nothing downstream ever sees clear values.

mod daemon {
    use std::collections::HashSet;
    use std::time::Duration;

    use serde_json::{Value, json};

    use crate::support::app::{App, run_bounded, text};
    use crate::support::fake_auth0::FakeAuth0;
    use crate::support::start_fakes;

    const KEY: &str = "a-hash-key-of-more-than-16-bytes";

    /// Entries holding personal data in the listed fields at several depths, and a full IPv4 address.
    fn personal(auth0: &FakeAuth0, n: usize) -> Vec<Value> {
        let mut entries = auth0.make_entries(n);
        for (i, e) in entries.iter_mut().enumerate() {
            e["user_name"] = json!(format!("person{i}@private.example.org"));
            e["ip"] = json!(format!("198.51.100.{}", 1 + i % 250));
            e["details"]["auth"] = json!({"user": {"email": format!("person{i}@private.example.org"), "name": format!("Person Number{i}")}});
            e["user_agent"] = json!("Chrome 134.0.0 / Windows 10.0.0");
        }
        entries
    }

    /// Every clear value of the listed fields in these entries.
    fn secrets_of(entries: &[Value]) -> Vec<String> {
        let mut out = Vec::new();
        for e in entries {
            out.push(e["user_name"].as_str().unwrap().to_string());
            out.push(e["details"]["auth"]["user"]["name"].as_str().unwrap().to_string());
            out.push(e["ip"].as_str().unwrap().to_string());
        }
        out
    }

    fn protect(app: &mut App) {
        let key = app.dir.path().join("hash.key");
        std::fs::write(&key, KEY).unwrap();
        app.set("privacy", "hash", vec!["email", "user_name", "name"])
            .set("privacy", "truncate_ip", true)
            .set("privacy", "drop", vec!["user_agent"])
            .set("privacy", "hash_key_file", key.display().to_string());
    }

    fn files_text(app: &App) -> Vec<u8> {
        let mut all = Vec::new();
        for suffix in ["", "-wal", "-shm"] {
            let p = format!("{}{suffix}", app.db_path().display());
            if let Ok(b) = std::fs::read(&p) {
                all.extend(b);
            }
        }
        all
    }

    fn contains(hay: &[u8], needle: &str) -> bool {
        hay.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    /// A `sync` while RudderStack is down, then a byte search of the state file and its WAL, finds no listed
    /// value in clear (and no full IP address); after the outage the delivered events hold none either.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_clear_value_reaches_the_state_file_or_rudderstack() {
        let (auth0, rudder) = start_fakes().await;
        let entries = personal(&auth0, 120);
        auth0.push(entries.clone());
        rudder.set_outage(true);
        let mut app = App::new(&auth0, &rudder);
        protect(&mut app);
        app.set("retry", "sync_give_up_after", "2s");
        let out = app.sync().await;
        assert_eq!(out.status.code(), Some(1), "RudderStack is down: {}", text(&out));
        assert_eq!(app.status().await["outbox_depth"], 120);
        let bytes = files_text(&app);
        assert!(bytes.len() > 100_000, "the state holds the outbox");
        for s in secrets_of(&entries) {
            assert!(!contains(&bytes, &s), "{s} is in the state file in clear");
        }
        assert!(!contains(&bytes, "Chrome 134"), "a dropped field is in the state file");
        assert!(!contains(&bytes, KEY), "the hash key is in the state file");

        rudder.set_outage(false);
        let out = app.sync().await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let events = rudder.events();
        assert_eq!(events.len(), 120);
        let all = serde_json::to_string(&events).unwrap();
        for s in secrets_of(&entries) {
            assert!(!all.contains(&s), "{s} reached RudderStack in clear");
        }
        for e in &events {
            let ip = e["context"]["ip"].as_str().unwrap();
            assert!(ip.ends_with(".0"), "{ip}");
            assert_eq!(e["context"]["traits"]["user_name"].as_str().unwrap().len(), 64, "{e}");
        }
        assert!(!all.contains("Chrome 134"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains(KEY));
    }

    /// At the most verbose level, through an outage, its retries, a dead letter and the delivery after it, no
    /// line the daemon writes holds a listed value in clear, a full address, a dropped field or the key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_log_line_holds_a_clear_value_even_at_trace_level() {
        let (auth0, rudder) = start_fakes().await;
        let mut entries = personal(&auth0, 40);
        // One the transform refuses (no type): its dead letter is logged by id and reason.
        entries[7].as_object_mut().unwrap().remove("type");
        auth0.push(entries.clone());
        rudder.set_outage(true);
        let mut app = App::new(&auth0, &rudder);
        protect(&mut app);
        app.set("retry", "sync_give_up_after", "2s");
        let mut logs = Vec::new();
        for _ in 0..2 {
            let mut cmd = app.command(&["sync"]);
            cmd.env("RUST_LOG", "trace");
            let out = run_bounded(cmd, Duration::from_secs(60)).await;
            logs.extend(out.stdout.iter().chain(out.stderr.iter()).copied());
            rudder.set_outage(false);
        }
        assert_eq!(rudder.events().len(), 39, "the second sync delivered the readable entries");
        let logs = String::from_utf8_lossy(&logs);
        // The check can fail: the most verbose lines are on, and the dead letter is told.
        assert!(logs.contains("page committed"), "no debug line was written:\n{logs}");
        assert!(logs.contains("dead letter"), "the dead letter is not logged:\n{logs}");
        for s in secrets_of(&entries) {
            assert!(!logs.contains(&s), "a log line holds {s} in clear");
        }
        assert!(!logs.contains("Chrome 134"), "a log line holds a dropped field");
        assert!(!logs.contains(KEY), "a log line holds the hash key");
    }

    /// Webhook mode posts the rewritten raw entries; `transform -c` applies the chosen tenant's rules; a dead
    /// letter holds the rewritten entry; the same hash comes out of all three.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn webhook_mode_transform_and_dead_letters_apply_the_same_rules() {
        let (auth0, rudder) = start_fakes().await;
        let mut entries = personal(&auth0, 10);
        // One the transform refuses (no type): it becomes a dead letter, rewritten.
        entries[3].as_object_mut().unwrap().remove("type");
        auth0.push(entries.clone());
        let mut app = App::new(&auth0, &rudder);
        protect(&mut app);
        let out = app.sync().await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let batch_events = rudder.events();
        assert_eq!(batch_events.len(), 9);
        let dead = app.run(&["dead-letter", "list", "--json"], Duration::from_secs(20)).await;
        let dead: Value = serde_json::from_slice(&dead.stdout).unwrap();
        let dead_text = dead.to_string();
        for s in secrets_of(&entries[3..4]) {
            assert!(!dead_text.contains(&s), "the dead letter holds {s} in clear");
        }
        let hashed_in_dead: Value = serde_json::from_str(dead[0]["raw"].as_str().unwrap()).unwrap();

        // transform -c on the same entries gives the same hashes.
        let file = app.dir.path().join("entries.json");
        std::fs::write(&file, serde_json::to_vec(&entries).unwrap()).unwrap();
        let mut cmd = app.command(&["transform"]);
        cmd.arg(&file);
        let out = run_bounded(cmd, Duration::from_secs(30)).await;
        assert!(out.status.success(), "{}", text(&out));
        let offline: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        let offline_text = serde_json::to_string(&offline).unwrap();
        for s in secrets_of(&entries) {
            assert!(!offline_text.contains(&s), "transform -c printed {s} in clear");
        }
        let strip = |e: &Value| crate::support::strip_ids(e);
        let mut a: Vec<Value> = batch_events.iter().map(strip).collect();
        let mut b: Vec<Value> = offline.iter().map(strip).collect();
        a.sort_by_key(|e| e["properties"]["log_id"].to_string());
        b.sort_by_key(|e| e["properties"]["log_id"].to_string());
        assert_eq!(a, b, "transform -c gives what the daemon sent");

        // Webhook mode: the raw entries RudderStack's own source would transform, rewritten too.
        let (auth0_w, rudder_w) = start_fakes().await;
        auth0_w.push(entries.clone());
        let mut app_w = App::new(&auth0_w, &rudder_w);
        protect(&mut app_w);
        app_w.set("rudderstack", "mode", "webhook");
        let out = app_w.sync().await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let wrappers = rudder_w.wrappers();
        assert_eq!(wrappers.len(), 10);
        let wrapped = serde_json::to_string(&wrappers).unwrap();
        for s in secrets_of(&entries) {
            assert!(!wrapped.contains(&s), "webhook mode posted {s} in clear");
        }
        let same: HashSet<String> =
            wrappers.iter().map(|w| w["data"]["user_name"].as_str().unwrap().to_string()).collect();
        let from_batch: HashSet<String> = batch_events
            .iter()
            .map(|e| e["context"]["traits"]["user_name"].as_str().unwrap().to_string())
            .collect();
        assert!(from_batch.is_subset(&same), "the same key gives the same hashes in both modes");
        // The entry batch mode set aside went out in webhook mode (RudderStack's source decides there), with
        // the hash its dead letter holds.
        let wrapped_dead = wrappers.iter().find(|w| w["log_id"] == entries[3]["log_id"]).expect("forwarded");
        let hash = hashed_in_dead["user_name"].as_str().unwrap();
        assert_eq!(hash.len(), 64, "{hash}");
        assert_eq!(wrapped_dead["data"]["user_name"], hashed_in_dead["user_name"]);
    }

    /// Entries holding IP addresses in every place and form `truncate_ip` must cover.
    fn addressed(auth0: &FakeAuth0) -> Vec<Value> {
        let mut entries = auth0.make_entries(4);
        // A real `pwd_leak` entry carries the full IPv6 address in its description.
        entries[0]["type"] = json!("pwd_leak");
        entries[0]["ip"] = json!("2001:db8:85a3:8d3:1319:8a2e:370:7348");
        entries[0]["description"] = json!(
            "This login was blocked because the password was leaked; IP 2001:db8:85a3:8d3:1319:8a2e:370:7348."
        );
        entries[1]["details"] = json!({
            "request": {
                "headers": {"x-forwarded-for": "203.0.113.195, 70.41.3.18,150.172.238.178", "X-Real-IP": "198.51.100.23"},
                "IP": "192.0.2.146:51234",
                "clientIP": "[2001:db8:abcd:12::5]:443",
                "client_ip": "fe80::1ff:fe23:4567:890a%eth2",
                "peers": ["100.64.7.9", "::ffff:198.51.100.99", "::ffff:c633:6463"],
            }
        });
        // 6to4 embeds 198.51.100.77 in bits 16 to 47; Teredo its client (65.54.227.120 obfuscated) at the end.
        entries[2]["ip"] = json!("2002:c633:644d:1::7");
        entries[2]["details"] =
            json!({"teredo": "2001:0:4136:e378:8000:63bf:be1c:1c87", "nat64": "64:ff9b::198.51.100.7"});
        entries[3]["user_agent"] =
            json!("Mozilla/5.0 Chrome/120.0.6099.109 from 10.1.2.3; via proxy at 10.20.30.40:3128");
        entries
    }

    /// With `truncate_ip`, no full address is left anywhere in what RudderStack receives, in either mode, or
    /// in the state file, by an independent scan (see `support::addresses`) that finds them in the input.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn truncate_ip_leaves_no_full_address_anywhere() {
        use crate::support::addresses;
        let full = |text: &str| -> Vec<String> {
            addresses::find(text).iter().filter_map(addresses::full_address).collect()
        };
        for mode in ["batch", "webhook"] {
            let (auth0, rudder) = start_fakes().await;
            let entries = addressed(&auth0);
            let input = serde_json::to_string(&entries).unwrap();
            let found = full(&input).join("; ");
            for form in [
                "2001:db8:85a3:8d3:1319:8a2e:370:7348",
                "2002:c633:644d:1::7",
                "teredo client",
                "fe80::",
                "2001:db8:abcd:12::5",
                "(mapped)",
                "(nat64)",
                "150.172.238.178",
                "192.0.2.146",
                "10.20.30.40",
            ] {
                assert!(found.contains(form), "the scan finds {form} in the input: {found}");
            }
            auth0.push(entries.clone());
            let mut app = App::new(&auth0, &rudder);
            app.set("privacy", "truncate_ip", true).set("rudderstack", "mode", mode);
            let out = app.sync().await;
            assert_eq!(out.status.code(), Some(0), "{}", text(&out));
            let received: Vec<u8> = rudder.bodies().concat();
            let received = String::from_utf8(received).unwrap();
            assert_eq!(full(&received), Vec::<String>::new(), "{mode}: {received}");
            // What truncation leaves is still found, and is what it should be.
            let left = addresses::find(&received);
            for want in
                ["2001:db8:85a3::", "2002:c633:6400::", "::ffff:198.51.100.0", "192.0.2.0", "150.172.238.0"]
            {
                assert!(left.contains(&want.parse().unwrap()), "{mode}: {want} not in {left:?}");
            }
            let state = String::from_utf8_lossy(&files_text(&app)).to_string();
            assert_eq!(full(&state), Vec::<String>::new(), "{mode}: the state file");
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            assert_eq!(full(&stderr), Vec::<String>::new(), "{mode}: {stderr}");
        }
    }

    /// `categories = ["Login - Failure", "Signup - Success"]` forwards exactly their documented codes;
    /// `exclude_types` wins over both; an unknown category exits 2 naming the known ones.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn categories_forward_their_documented_codes_and_exclusions_win() {
        let (auth0, rudder) = start_fakes().await;
        let codes = ["f", "fp", "fu", "ss", "s", "sapi", "seccft", "fc", "w", "fs"];
        let mut entries = auth0.make_entries(codes.len() * 3);
        for (i, e) in entries.iter_mut().enumerate() {
            e["type"] = json!(codes[i % codes.len()]);
        }
        auth0.push(entries.clone());
        let mut app = App::new(&auth0, &rudder);
        app.set("auth0", "categories", vec!["Login - Failure", "Signup - Success"]);
        app.set("auth0", "exclude_types", vec!["fp"]);
        let out = app.sync().await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let login_failure = auth0_rudderstack::transform::category_codes("Login - Failure").unwrap();
        let expected: Vec<String> = entries
            .iter()
            .filter(|e| {
                let t = e["type"].as_str().unwrap();
                t != "fp" && (login_failure.contains(&t) || t == "ss")
            })
            .map(|e| e["log_id"].as_str().unwrap().to_string())
            .collect();
        let got: Vec<String> =
            rudder.events().iter().map(|e| e["properties"]["log_id"].as_str().unwrap().to_string()).collect();
        assert_eq!(got, expected);
        assert!(!got.is_empty());
        let s = app.status().await;
        assert_eq!(s["filtered_total"].as_u64().unwrap() as usize, entries.len() - expected.len());
        assert!(s["filter"].as_str().unwrap().contains("never types fp"), "{s}");

        app.set("auth0", "categories", vec!["Login - Failure", "Logins that failed"]);
        let out = app.run(&["status"], Duration::from_secs(20)).await;
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("auth0.categories")
                && err.contains("Logins that failed")
                && err.contains("Signup - Success"),
            "{err}"
        );
    }

    /// `status` and the metrics say which privacy rules and filters are active, never the key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_and_metrics_name_the_active_rules() {
        let (auth0, rudder) = start_fakes().await;
        auth0.push_synthetic(5);
        let mut app = App::new(&auth0, &rudder);
        protect(&mut app);
        app.set("auth0", "log_types", vec!["s", "f"]);
        assert_eq!(app.sync().await.status.code(), Some(0));
        let s = app.status().await;
        let privacy = s["privacy"].as_str().unwrap();
        assert!(
            privacy.contains("hash [email, user_name, name]") && privacy.contains("drop [user_agent]"),
            "{s}"
        );
        assert!(s["filter"].as_str().unwrap().contains("only types f,s"), "{s}");
        let m = app.run(&["metrics"], Duration::from_secs(20)).await;
        let m = String::from_utf8_lossy(&m.stdout);
        assert!(
            m.contains("auth0_rudderstack_rules{") && m.contains("privacy=\"hash [email, user_name, name]"),
            "{m}"
        );
        assert!(!m.contains(KEY) && !s.to_string().contains(KEY));
    }

    /// Changing the rules affects only entries fetched afterwards: rows fetched without rules while
    /// RudderStack was down go out as they were stored, in clear, after `hash` is added; entries fetched
    /// after the change go out hashed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn new_rules_apply_only_to_entries_fetched_after_the_change() {
        let (auth0, rudder) = start_fakes().await;
        let old = personal(&auth0, 10);
        auth0.push(old.clone());
        rudder.set_outage(true);
        let mut app = App::new(&auth0, &rudder);
        app.set("retry", "sync_give_up_after", "1s");
        let out = app.sync().await;
        assert_eq!(out.status.code(), Some(1), "RudderStack is down: {}", text(&out));
        assert_eq!(app.status().await["outbox_depth"], 10);

        let key = app.dir.path().join("hash.key");
        std::fs::write(&key, KEY).unwrap();
        app.set("privacy", "hash", vec!["user_name"]).set(
            "privacy",
            "hash_key_file",
            key.display().to_string(),
        );
        let new = personal(&auth0, 5);
        auth0.push(new.clone());
        rudder.set_outage(false);
        let out = app.sync().await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let events = rudder.events();
        assert_eq!(events.len(), 15);
        for (event, entry) in events.iter().zip(old.iter().chain(&new)) {
            assert_eq!(event["properties"]["log_id"], entry["log_id"]);
        }
        for (event, entry) in events[..10].iter().zip(&old) {
            assert_eq!(
                event["context"]["traits"]["user_name"], entry["user_name"],
                "stored before the change"
            );
        }
        for (event, entry) in events[10..].iter().zip(&new) {
            let clear = entry["user_name"].as_str().unwrap();
            let sent = event["context"]["traits"]["user_name"].as_str().unwrap();
            assert_eq!(sent.len(), 64, "{sent}");
            assert!(sent.bytes().all(|b| b.is_ascii_hexdigit()) && sent != clear, "{sent}");
        }
    }
}
