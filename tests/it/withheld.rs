//! No clear value of a listed field is stored or sent, whatever the entry holds: entries with lone UTF-16
//! surrogates (valid JSON, which JavaScript reads) are delivered with their fields hashed, and an entry that
//! truly cannot be read (not valid UTF-8) is set aside without its text, listed as withheld, and fetched again
//! by `dead-letter retry`. Checked by a byte search, in every encoding a value could take, of the state file,
//! its WAL, every command's output and everything RudderStack received; through `sync`, `import` and webhook
//! mode.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::support::app::{App, run_bounded, text, text as text_of};
use crate::support::fake_auth0::FakeAuth0;
use crate::support::start_fakes;

const KEY: &str = "a-hash-key-of-more-than-16-bytes";

/// The clear values the entries below hold in listed fields.
const SECRETS: [&str; 8] = [
    "alice.secret@private.example.org",
    "victim1@private.example.org",
    "victim2@private.example.org",
    "Victim Two Name",
    "victim3@private.example.org",
    "victim4@private.example.org",
    "victim5@private.example.org",
    "gone.victim@private.example.org",
];

/// Every way a value can be written into JSON text or a log line: as it is, JSON-escaped, and every
/// character as a `\u` escape (lower and upper case).
fn encodings(secret: &str) -> Vec<Vec<u8>> {
    let escaped = serde_json::to_string(secret).unwrap();
    let u_lower: String = secret.encode_utf16().map(|u| format!("\\u{u:04x}")).collect();
    let u_upper: String = secret.encode_utf16().map(|u| format!("\\u{u:04X}")).collect();
    // The local part alone, so that a value cut or rewritten around its `@` is found too.
    let local = secret.split('@').next().unwrap_or(secret).to_string();
    vec![
        secret.as_bytes().to_vec(),
        escaped.as_bytes()[1..escaped.len() - 1].to_vec(),
        u_lower.into_bytes(),
        u_upper.into_bytes(),
        local.into_bytes(),
    ]
}

/// Panic if `hay` holds any secret in any encoding, naming what holds it.
fn assert_no_clear_value(hay: &[u8], what: &str) {
    for secret in SECRETS {
        for form in encodings(secret) {
            let found = hay.windows(form.len()).any(|w| w == form.as_slice());
            assert!(!found, "{what} holds {secret:?} as {:?}", String::from_utf8_lossy(&form));
        }
    }
}

/// The state file, its WAL and shared memory, as bytes.
fn state_bytes(app: &App) -> Vec<u8> {
    let mut all = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        if let Ok(b) = std::fs::read(format!("{}{suffix}", app.db_path().display())) {
            all.extend(b);
        }
    }
    all
}

fn protect(app: &mut App) {
    let key = app.dir.path().join("hash.key");
    std::fs::write(&key, KEY).unwrap();
    app.set("privacy", "hash", vec!["email", "user_name", "name"])
        .set("privacy", "truncate_ip", true)
        .set("privacy", "drop", vec!["user_agent"])
        .set("privacy", "hash_key_file", key.display().to_string());
}

/// The hash the rules give a string's WTF-8 bytes.
fn hash_of(bytes: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
    mac.update(bytes);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// The entries of the scenario, as served: (stand-in value with the entry's log_id and date, served bytes).
struct Scenario {
    served: Vec<(Value, Vec<u8>)>,
}

impl Scenario {
    /// A readable first entry (a fresh state starts from it), one Auth0 will no longer hold when it is
    /// retried, entries with lone surrogates in keys and hashed values, one that is not valid UTF-8, one not
    /// valid UTF-8 even in its log_id, and a plain last one.
    fn new(auth0: &FakeAuth0) -> Scenario {
        let mut made = auth0.make_entries(7);
        for e in &mut made {
            e["type"] = json!("f");
            e["ip"] = json!("198.51.100.77");
            e["details"] =
                json!({"request": {"ip": "2002:c633:644d::1", "x-forwarded-for": "203.0.113.9, 10.9.8.7"}});
        }
        let text = |e: &Value| serde_json::to_string(e).unwrap();
        let with = |e: &Value, user_name: &str| text(e).replace(&text(&e["user_name"]), user_name);
        let mut served = Vec::new();
        made[0]["user_name"] = json!(SECRETS[0]);
        served.push((made[0].clone(), text(&made[0]).into_bytes()));
        // Not valid UTF-8, and later aged out of the tenant's retention.
        served
            .push((made[1].clone(), invalid(&with(&made[1], r#""gone.victim@private.example.orgX""#), 0xff)));
        // A lone surrogate as a key and inside the hashed user_name.
        let e =
            with(&made[2], r#""\ud800victim1@private.example.org""#).replacen('{', r#"{"\ud800":"x","#, 1);
        served.push((made[2].clone(), e.into_bytes()));
        // Lone surrogates in a nested key and in the hashed details.auth.user fields.
        let mut nested = made[3].clone();
        nested["details"]["auth"] = json!({"user": {"email": "EMAIL", "name": "NAME"}});
        let e = text(&nested)
            .replace("\"EMAIL\"", r#""victim2@private.example.org\udfff""#)
            .replace("\"NAME\"", r#""Victim Two Name\udc00""#)
            .replace(r#""auth":{"#, r#""auth":{"\udc00k":"v","#);
        served.push((made[3].clone(), e.into_bytes()));
        // Not valid UTF-8 inside the hashed user_name.
        served.push((made[4].clone(), invalid(&with(&made[4], r#""victim3@private.example.orgX""#), 0xfe)));
        // Not valid UTF-8 in its log_id either, so it has none.
        let id = made[5]["log_id"].as_str().unwrap().to_string();
        let no_id = with(&made[5], r#""victim4@private.example.org""#)
            .replace(&format!(r#""log_id":"{id}""#), r#""log_id":"9X""#);
        served.push((made[5].clone(), invalid(&no_id, 0xc3)));
        made[6]["user_name"] = json!("victim5@private.example.org");
        served.push((made[6].clone(), text(&made[6]).into_bytes()));
        Scenario { served }
    }

    fn push(&self, auth0: &FakeAuth0) {
        for (entry, bytes) in &self.served {
            auth0.push_raw(entry.clone(), bytes.clone());
        }
    }

    fn log_id(&self, i: usize) -> String {
        self.served[i].0["log_id"].as_str().unwrap().to_string()
    }
}

/// `text` with its one `X` replaced by a byte that makes it invalid UTF-8.
fn invalid(text: &str, byte: u8) -> Vec<u8> {
    assert_eq!(text.matches('X').count(), 1, "{text}");
    text.bytes().map(|b| if b == b'X' { byte } else { b }).collect()
}

/// Every command's output, kept for the final search.
#[derive(Default)]
struct Outputs(Vec<u8>);

impl Outputs {
    fn keep(&mut self, out: &std::process::Output) -> String {
        self.0.extend_from_slice(&out.stdout);
        self.0.extend_from_slice(&out.stderr);
        text(out)
    }
}

/// `dead-letter list --json` and its text form, checked and kept.
async fn list(app: &App, outputs: &mut Outputs) -> Vec<Value> {
    let out = app.run(&["dead-letter", "list"], Duration::from_secs(20)).await;
    let shown = outputs.keep(&out);
    assert!(out.status.success(), "{shown}");
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    let out = app.run(&["dead-letter", "list", "--json"], Duration::from_secs(20)).await;
    let shown = outputs.keep(&out);
    assert!(out.status.success(), "{shown}");
    let letters: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    // The text form marks each letter kept without its text, on the letter's own line.
    for l in &letters {
        let line = table.lines().find(|line| line.starts_with(&l["id"].to_string())).expect("listed");
        assert_eq!(line.contains("withheld"), l["withheld"] == true, "{table}");
    }
    letters
}

async fn retry(app: &App, outputs: &mut Outputs) -> String {
    let out = app.run(&["dead-letter", "retry"], Duration::from_secs(30)).await;
    let shown = outputs.keep(&out);
    assert!(out.status.success(), "{shown}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `sync`, dead letters listed and retried while one entry is still unreadable, one that Auth0 no longer
/// holds, and one without a log_id; then the unreadable entry fixed upstream, retried and delivered by another
/// `sync`. Nothing anywhere holds a clear value, and the readable entries arrive hashed over their WTF-8.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_with_lone_surrogates_are_hashed_and_unreadable_ones_withheld_and_fetched_again() {
    let (auth0, rudder) = start_fakes().await;
    let scenario = Scenario::new(&auth0);
    scenario.push(&auth0);
    let mut app = App::new(&auth0, &rudder);
    protect(&mut app);
    let mut outputs = Outputs::default();

    let out = app.sync().await;
    let shown = outputs.keep(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    let events = rudder.events();
    let delivered: Vec<String> =
        events.iter().map(|e| e["properties"]["log_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(delivered, [0, 2, 3, 6].map(|i| scenario.log_id(i)), "{shown}");
    // Hashed over the WTF-8 bytes of the value as JavaScript reads it.
    assert_eq!(
        events[1]["context"]["traits"]["user_name"],
        hash_of(b"\xED\xA0\x80victim1@private.example.org")
    );
    assert_eq!(events[2]["context"]["traits"]["email"], hash_of(b"victim2@private.example.org\xED\xBF\xBF"));
    assert_eq!(events[2]["context"]["traits"]["name"], hash_of(b"Victim Two Name\xED\xB0\x80"));
    assert_eq!(events[0]["context"]["ip"], "198.51.100.0");

    let letters = list(&app, &mut outputs).await;
    assert_eq!(letters.len(), 3, "{letters:?}");
    assert!(letters.iter().all(|l| l["withheld"] == true && l["raw"] == ""), "{letters:?}");
    let ids: Vec<Value> = letters.iter().map(|l| l["log_id"].clone()).collect();
    assert_eq!(ids, [json!(scenario.log_id(1)), json!(scenario.log_id(4)), Value::Null]);
    assert!(
        letters.iter().all(|l| l["sha256"].as_str().unwrap().len() == 64 && l["size"].as_u64() > Some(100))
    );

    // Still unreadable; the first aged out; the last has no log_id to fetch by.
    auth0.expire_oldest(2);
    let said = retry(&app, &mut outputs).await;
    assert!(said.contains("0 dead letters moved back"), "{said}");
    assert!(said.contains(&scenario.log_id(1)) && said.contains("Auth0 no longer holds"), "{said}");
    assert!(said.contains(&scenario.log_id(4)) && said.contains("still cannot be read"), "{said}");
    assert!(said.contains("has no log_id, so it cannot be fetched again"), "{said}");
    assert_eq!(list(&app, &mut outputs).await.len(), 3);

    // Fixed upstream (now only a lone surrogate in it): fetched again, moved back, delivered hashed.
    let fixed = String::from_utf8_lossy(&scenario.served[4].1).replace('\u{FFFD}', "\\ud801");
    auth0.replace_raw(&scenario.log_id(4), fixed);
    let said = retry(&app, &mut outputs).await;
    assert!(
        said.contains(&format!("log_id {}) was fetched again from Auth0 and moved back", scenario.log_id(4))),
        "{said}"
    );
    let out = app.sync().await;
    let shown = outputs.keep(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    let events = rudder.events();
    let last = events.last().unwrap();
    assert_eq!(last["properties"]["log_id"], scenario.log_id(4));
    assert_eq!(last["context"]["traits"]["user_name"], hash_of(b"victim3@private.example.org\xED\xA0\x81"));
    let left = list(&app, &mut outputs).await;
    assert_eq!(left.len(), 2, "{left:?}");

    let requests = auth0.recorded();
    let by_id: Vec<&str> =
        requests.iter().filter(|r| r.path.starts_with("/api/v2/logs/")).map(|r| r.path.as_str()).collect();
    assert_eq!(by_id.len(), 4, "one fetch per letter with a log_id and retry: {by_id:?}");

    assert_no_clear_value(&state_bytes(&app), "the state file");
    assert_no_clear_value(&outputs.0, "a command's output");
    for body in rudder.bodies() {
        assert_no_clear_value(&body, "a body RudderStack received");
    }
    assert!(!rudder.bodies().is_empty());
}

/// Webhook mode posts the wrappers with the lone surrogates kept as escapes and the listed fields hashed;
/// the unreadable entries never leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_mode_posts_entries_with_lone_surrogates_hashed() {
    let (auth0, rudder) = start_fakes().await;
    let scenario = Scenario::new(&auth0);
    scenario.push(&auth0);
    let mut app = App::new(&auth0, &rudder);
    protect(&mut app);
    app.set("rudderstack", "mode", "webhook");
    let mut outputs = Outputs::default();
    let out = app.sync().await;
    let shown = outputs.keep(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    let wrappers = rudder.wrappers();
    let ids: Vec<&str> = wrappers.iter().map(|w| w["log_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [0, 2, 3, 6].map(|i| scenario.log_id(i)));
    assert_eq!(wrappers[1]["data"]["user_name"], hash_of(b"\xED\xA0\x80victim1@private.example.org"));
    let bodies = rudder.bodies();
    let all: Vec<u8> = bodies.concat();
    let has = |needle: &[u8]| all.windows(needle.len()).any(|w| w == needle);
    assert!(has(br#""\ud800":"x""#), "the lone surrogate key is forwarded as an escape");
    assert_eq!(list(&app, &mut outputs).await.len(), 3);
    assert_no_clear_value(&state_bytes(&app), "the state file");
    assert_no_clear_value(&outputs.0, "a command's output");
    assert_no_clear_value(&all, "a body RudderStack received");
}

/// `import` of entries with lone surrogates delivers them hashed; an element that holds no entry (a bare
/// string, an EventBridge event without `detail.data`) is set aside without a clear value; retrying says
/// what can and cannot be done; `transform -c` prints the same hashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_and_transform_of_entries_with_lone_surrogates_keep_no_clear_value() {
    let (auth0, rudder) = start_fakes().await;
    let scenario = Scenario::new(&auth0);
    let mut app = App::new(&auth0, &rudder);
    protect(&mut app);
    let mut outputs = Outputs::default();
    // The readable entries of the scenario, one per line, and two elements that hold no entry.
    let mut file = Vec::new();
    for i in [0, 2, 3, 6] {
        file.extend_from_slice(&scenario.served[i].1);
        file.push(b'\n');
    }
    file.extend_from_slice(b"\"victim4@private.example.org\"\n");
    let eventbridge = json!({
        "version": "0", "id": "e1", "detail-type": "Auth0 log",
        "source": "aws.partner/auth0.com/fake/auth0.logs",
        "detail": {"log_id": scenario.log_id(5), "user_name": SECRETS[7], "details": {"email": SECRETS[6]}}
    });
    file.extend_from_slice(
        serde_json::to_string(&eventbridge).unwrap().replacen('{', r#"{"\ud800":1,"#, 1).as_bytes(),
    );
    file.push(b'\n');
    let path = app.dir.path().join("archive.ndjson");
    std::fs::write(&path, &file).unwrap();

    let out = app.run(&["import", path.to_str().unwrap()], Duration::from_secs(60)).await;
    let shown = outputs.keep(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    let events = rudder.events();
    assert_eq!(events.len(), 4, "{shown}");
    assert_eq!(
        events[1]["context"]["traits"]["user_name"],
        hash_of(b"\xED\xA0\x80victim1@private.example.org")
    );
    let letters = list(&app, &mut outputs).await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    let withheld: Vec<bool> = letters.iter().map(|l| l["withheld"] == true).collect();
    assert_eq!(withheld, [true, false], "the bare string is withheld; the event keeps its rewritten text");
    let said = retry(&app, &mut outputs).await;
    assert!(said.contains("1 dead letter moved back") && said.contains("has no log_id"), "{said}");
    let out = app.sync().await;
    let shown = outputs.keep(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");

    // `transform -c` reads the same lines (less the ones that are no entry) and prints the same hashes.
    let lines = app.dir.path().join("entries.ndjson");
    let readable: Vec<u8> = file.split(|&b| b == b'\n').take(4).flat_map(|l| [l, b"\n"].concat()).collect();
    std::fs::write(&lines, readable).unwrap();
    let mut cmd = app.command(&["transform"]);
    cmd.arg(&lines);
    let out = run_bounded(cmd, Duration::from_secs(30)).await;
    let shown = outputs.keep(&out);
    assert!(out.status.success(), "{shown}");
    // Lone surrogates stay escapes in the output, as JSON.stringify writes them; read them as Go does.
    let printed = crate::support::fake_rudderstack::go_json(&out.stdout).expect("JSON");
    let printed = printed.as_array().expect("an array");
    assert_eq!(printed[1]["context"]["traits"]["user_name"], events[1]["context"]["traits"]["user_name"]);
    assert_eq!(printed.len(), 4);

    assert_no_clear_value(&state_bytes(&app), "the state file");
    assert_no_clear_value(&outputs.0, "a command's output");
    for body in rudder.bodies() {
        assert_no_clear_value(&body, "a body RudderStack received");
    }
}

/// `dead-letter retry` with Auth0 failing (500 on `GET /api/v2/logs/{id}`) tries every withheld letter once,
/// says for each that it stays set aside, and then exits 1; the letters are all still listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth0_failure_during_retry_exits_1_after_every_letter_was_tried() {
    let (auth0, rudder) = start_fakes().await;
    let mut made = auth0.make_entries(3);
    for e in &mut made {
        e["user_name"] = json!("someone");
    }
    let text = |e: &Value| serde_json::to_string(e).unwrap();
    auth0.push_raw(made[0].clone(), text(&made[0]));
    for (i, byte) in [(1, 0xff), (2, 0xfe)] {
        let bytes = invalid(&text(&made[i]).replace("\"someone\"", "\"someXone\""), byte);
        auth0.push_raw(made[i].clone(), bytes);
    }
    let mut app = App::new(&auth0, &rudder);
    protect(&mut app);
    let mut outputs = Outputs::default();
    let out = app.sync().await;
    let shown = outputs.keep(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    let letters = list(&app, &mut outputs).await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(letters.iter().all(|l| l["withheld"] == true), "{letters:?}");

    auth0.set_hook(|req, _| {
        req.path.starts_with("/api/v2/logs/").then(|| {
            crate::support::http::Reply::json(
                500,
                &json!({"statusCode": 500, "error": "Internal Server Error"}),
            )
        })
    });
    let out = app.run(&["dead-letter", "retry"], Duration::from_secs(60)).await;
    let shown = text_of(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    let said = String::from_utf8_lossy(&out.stdout);
    for i in [1, 2] {
        let id = made[i]["log_id"].as_str().unwrap();
        let line = said.lines().find(|l| l.contains(id)).unwrap_or_else(|| panic!("{id} not named: {shown}"));
        assert!(
            line.contains("could not be fetched again from Auth0") && line.contains("stays set aside"),
            "{line}"
        );
    }
    let by_id: Vec<String> = auth0
        .recorded()
        .iter()
        .filter(|r| r.path.starts_with("/api/v2/logs/"))
        .map(|r| r.path.clone())
        .collect();
    let want: Vec<String> =
        [1, 2].map(|i| format!("/api/v2/logs/{}", made[i]["log_id"].as_str().unwrap())).into();
    let mut got = by_id.clone();
    got.sort();
    assert_eq!(got, want, "one request per letter: {by_id:?}");
    assert_eq!(list(&app, &mut outputs).await.len(), 2, "the letters stay set aside");
    assert_eq!(app.status().await["outbox_depth"], 0);
}

/// Without `[privacy]` an entry that is not valid UTF-8 is kept whole, each invalid byte read as U+FFFD,
/// while the rest of its page is delivered; `dead-letter retry` queues that text as it is (no request to
/// Auth0), and the next `sync` delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_rules_an_entry_that_is_not_utf8_is_kept_with_replacements_and_a_retry_delivers_it() {
    let (auth0, rudder) = start_fakes().await;
    let made = auth0.make_entries(3);
    let text = |e: &Value| serde_json::to_string(e).unwrap();
    let mut bad = made[1].clone();
    bad["description"] = json!("broken X here");
    auth0.push_raw(made[0].clone(), text(&made[0]));
    auth0.push_raw(made[1].clone(), invalid(&text(&bad), 0xff));
    auth0.push_raw(made[2].clone(), text(&made[2]));
    let app = App::new(&auth0, &rudder);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text_of(&out));
    let ids = |events: &[Value]| -> Vec<String> {
        events.iter().map(|e| e["properties"]["log_id"].as_str().unwrap().to_string()).collect()
    };
    let id = |i: usize| made[i]["log_id"].as_str().unwrap().to_string();
    assert_eq!(ids(&rudder.events()), [id(0), id(2)]);

    let out = app.run(&["dead-letter", "list", "--json"], Duration::from_secs(20)).await;
    assert!(out.status.success(), "{}", text_of(&out));
    let letters: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["withheld"], false, "{letters:?}");
    assert_eq!(letters[0]["log_id"], id(1));
    let raw: Value =
        serde_json::from_str(letters[0]["raw"].as_str().unwrap()).expect("the kept text is JSON");
    assert_eq!(raw["description"], "broken \u{FFFD} here");

    let before = auth0.recorded().len();
    let out = app.run(&["dead-letter", "retry"], Duration::from_secs(30)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text_of(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 dead letter moved back"), "{}", text_of(&out));
    assert_eq!(auth0.recorded().len(), before, "a letter kept whole is queued without asking Auth0");
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text_of(&out));
    let events = rudder.events();
    assert_eq!(ids(&events), [id(0), id(2), id(1)]);
    assert_eq!(events[2]["properties"]["description"], "broken \u{FFFD} here");
    assert_eq!(app.status().await["dead_letters"], 0);
}
