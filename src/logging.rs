//! What reaches stderr, and the guarantees about it: one line per event, no forged lines, no secrets.
//!
//! The daemon logs text it did not write: error bodies from Auth0 and RudderStack, `log_id`s, entry fields,
//! file names. Any of it may hold a newline that would forge a whole log line, or terminal escapes that
//! rewrite the operator's screen. Rather than trusting every call site to escape, the writer behind the
//! subscriber does it for every line: control characters are escaped (`\n`, `\x1b`, …) except the newline
//! that ends the line. The same writer removes every registered secret (client secrets, write keys in the
//! forms they travel in, hash keys, access tokens), so a secret that slipped into a message anyway is still
//! not printed. In JSON mode serde_json already escapes the C0 controls but leaves DEL, the C1 controls and the
//! bidi overrides raw, so the writer turns those into JSON `\u` escapes: the line stays one valid JSON object
//! and the terminal still sees nothing it acts on. Secrets are removed the same way in both formats.
//!
//! The panic hook uses the same sanitiser and then ends the process with [`EXIT_BUG`], so that a bug in one
//! task can never leave a half-dead daemon running while systemd believes it healthy.

use std::fmt;
use std::io::{self, Write};
use std::sync::{OnceLock, RwLock};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Exit status after a bug (a panic): like Rust's default, and not one of the documented codes, so systemd
/// restarts the service.
pub const EXIT_BUG: i32 = 101;

/// How many secrets may be registered; access tokens beyond this evict the oldest ones.
const MAX_SECRETS: usize = 4096;

/// What replaces a secret.
pub const REDACTED: &str = "[redacted]";

/// The log format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One line of text per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// The format chosen by [`init`], for the lines written outside the subscriber.
static FORMAT: OnceLock<Format> = OnceLock::new();

fn secrets() -> &'static RwLock<Vec<Box<str>>> {
    static SECRETS: OnceLock<RwLock<Vec<Box<str>>>> = OnceLock::new();
    SECRETS.get_or_init(|| RwLock::new(Vec::new()))
}

/// Register a secret: from now on it is replaced by `[redacted]` in everything this module writes. Secrets
/// shorter than 6 characters are not registered (they would redact ordinary words).
pub fn register_secret(secret: &str) {
    if secret.len() < 6 {
        return;
    }
    let mut list = secrets().write().unwrap_or_else(|p| p.into_inner());
    if list.iter().any(|s| &**s == secret) {
        return;
    }
    if list.len() >= MAX_SECRETS {
        list.remove(0);
    }
    list.push(secret.into());
}

/// Remove every registered secret from `text`.
pub fn redact(text: &str) -> String {
    let list = secrets().read().unwrap_or_else(|p| p.into_inner());
    let mut out = text.to_string();
    for s in list.iter() {
        if out.contains(&**s) {
            out = out.replace(&**s, REDACTED);
        }
    }
    out
}

/// At most `max` bytes of `s` (cut at a character boundary, with `…` when cut): what a message quotes of text
/// from outside, which may be of any length.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Escape control characters so that `text` stays on one line and cannot drive a terminal.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    out
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x20 || c as u32 == 0x7f => {
            out.push_str(&format!("\\x{:02x}", c as u32));
        }
        // C1 controls (0x80-0x9f) also start terminal sequences; bidi controls can reorder a line.
        c if (0x80..=0x9f).contains(&(c as u32)) || is_bidi(c) => {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
        c => out.push(c),
    }
}

/// Whether a terminal may act on `c`: a control character, or a bidi control that can reorder a line.
fn is_active(c: char) -> bool {
    c.is_control() || is_bidi(c)
}

/// The bidi embeddings and overrides (U+202A to U+202E), the isolates (U+2066 to U+2069) and the marks
/// (U+200E, U+200F, U+061C): invisible, and able to make a line read in another order than it is written.
fn is_bidi(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
}

/// Make one line of JSON output safe: secrets removed, and every character a terminal acts on (which JSON
/// only allows inside strings) written as a JSON `\uXXXX` escape, so the line still parses to the same value.
pub fn sanitize_json_line(line: &str) -> String {
    let body = line.strip_suffix('\n').unwrap_or(line);
    let redacted = redact(body);
    let mut out = String::with_capacity(redacted.len() + 1);
    for c in redacted.chars() {
        if is_active(c) {
            // All such characters lie in the Basic Multilingual Plane: four hex digits are enough.
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    if line.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// Make one line of output safe: secrets removed, control characters escaped, one trailing newline kept.
pub fn sanitize_line(line: &str) -> String {
    let body = line.strip_suffix('\n').unwrap_or(line);
    let mut out = escape(&redact(body));
    if line.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// An error and its whole chain of sources on one line, joined by `": "`, as `main` prints it. Each error's
/// own message never repeats its source (see the convention in the crate docs), so nothing appears twice.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut previous = self.0.to_string();
        write!(f, "{previous}")?;
        let mut source = self.0.source();
        while let Some(s) = source {
            let text = s.to_string();
            // Our own errors never repeat their source; some dependencies' do (rusqlite prints "database is
            // locked", then its source "Error code 5: database is locked"). Say each cause once.
            if !text.is_empty() && !previous.contains(&text) && !text.contains(&previous) {
                write!(f, ": {text}")?;
            }
            previous = text;
            source = s.source();
        }
        Ok(())
    }
}

/// The stderr writer behind the subscriber: sanitises each formatted event, as its format needs, before it
/// is written.
#[derive(Clone, Copy)]
struct SafeStderr(Format);

struct SafeWriter(Format);

impl Write for SafeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The fmt layer formats a whole event into one buffer and writes it at once.
        let text = String::from_utf8_lossy(buf);
        let clean = match self.0 {
            Format::Text => sanitize_line(&text),
            Format::Json => sanitize_json_line(&text),
        };
        io::stderr().lock().write_all(clean.as_bytes())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for SafeStderr {
    type Writer = SafeWriter;
    fn make_writer(&'a self) -> Self::Writer {
        SafeWriter(self.0)
    }
}

/// The filter: `RUST_LOG` when it names targets; otherwise its level (default `info`) applies to this
/// crate while other crates stay at `warn`, so that `RUST_LOG=debug` shows the daemon's own lines rather
/// than drowning them in the HTTP stack's.
pub fn filter(rust_log: Option<&str>) -> EnvFilter {
    let crate_name = env!("CARGO_CRATE_NAME");
    let spec = match rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        None => format!("warn,{crate_name}=info"),
        Some(level) if is_bare_level(level) => match level.to_ascii_lowercase().as_str() {
            "off" | "error" => level.to_string(),
            l => format!("warn,{crate_name}={l}"),
        },
        Some(directives) => directives.to_string(),
    };
    EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new(format!("warn,{crate_name}=info")))
}

fn is_bare_level(s: &str) -> bool {
    matches!(s.to_ascii_lowercase().as_str(), "off" | "error" | "warn" | "info" | "debug" | "trace")
}

/// Install the subscriber and the panic hook.
pub fn init(format: Format) {
    let _ = FORMAT.set(format);
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(SafeStderr(format)).with_ansi(false);
    match format {
        Format::Text => builder.init(),
        Format::Json => builder.json().init(),
    }
    std::panic::set_hook(Box::new(|info| {
        let location =
            info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_else(|| "?".into());
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(
            location = %location,
            "internal error (a bug) at {location}: {payload}; exiting with status {EXIT_BUG} so that the \
             service manager restarts the daemon"
        );
        std::process::exit(EXIT_BUG);
    }));
}

/// Print the final error of a command in the chosen format, sanitised like every other line.
pub fn final_error(format: Format, message: &str) {
    match format {
        Format::Text => {
            let line = sanitize_line(&format!("error: {message}\n"));
            let _ = io::stderr().lock().write_all(line.as_bytes());
        }
        Format::Json => tracing::error!("{message}"),
    }
}

/// Print a warning that is not a log event (the `transform` command's notes about entries), sanitised; in
/// JSON mode it is a log event, so that every line on stderr stays JSON.
pub fn note(text: &str) {
    if FORMAT.get() == Some(&Format::Json) {
        tracing::warn!("{text}");
        return;
    }
    let line = sanitize_line(&format!("{text}\n"));
    let _ = io::stderr().lock().write_all(line.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_line_end_kept() {
        let line = sanitize_line("a\nERROR forged\r\x1b[2J\u{9b}b\u{2067}c\u{202e}d\u{200f}\n");
        assert_eq!(line, "a\\nERROR forged\\r\\x1b[2J\\u{9b}b\\u{2067}c\\u{202e}d\\u{200f}\n");
        assert_eq!(line.matches('\n').count(), 1);
    }

    #[test]
    fn a_json_line_keeps_its_value_and_loses_every_raw_control_character() {
        let value = serde_json::json!({"message": "a\nERROR forged\x1b[2J\u{9b}31m\x7f\u{202e}b\u{2066}c"});
        let line = sanitize_json_line(&format!("{value}\n"));
        assert_eq!(line.matches('\n').count(), 1);
        assert!(!line.trim_end().chars().any(is_active), "{line:?}");
        let back: serde_json::Value = serde_json::from_str(&line).expect("still JSON");
        assert_eq!(back, value);
    }

    #[test]
    fn registered_secrets_are_redacted_and_short_ones_ignored() {
        register_secret("s3cr3t-for-the-logging-test");
        register_secret("abc");
        assert_eq!(redact("x s3cr3t-for-the-logging-test y abc"), "x [redacted] y abc");
    }

    #[test]
    fn a_bare_level_applies_to_this_crate_only() {
        let f = filter(Some("debug")).to_string();
        assert!(f.contains("warn") && f.contains("auth0_rudderstack=debug"), "{f}");
        assert_eq!(filter(Some("hyper=trace")).to_string(), "hyper=trace");
        assert!(filter(None).to_string().contains("auth0_rudderstack=info"));
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_chain_names_each_cause_once() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(Chain(&e).to_string(), "outer: inner");
    }
}
