//! The command line's shape: every command, flag and help text, in one place.
//!
//! It lives in the library rather than in `main.rs` so that the man page and the shell completions are
//! generated from exactly the parser the binary uses (see `examples/`), and so that tests can check it.
//! `main.rs` only dispatches on the parsed value. Operators script against these names: extend them, don't
//! rename them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// The config file used when none is given.
pub const DEFAULT_CONFIG: &str = "config.toml";

/// Deliver Auth0 tenants' logs to RudderStack, by pulling them from the Management API.
#[derive(Parser, Debug)]
#[command(name = "auth0-rudderstack", version, about, long_about = None)]
pub struct Cli {
    /// The TOML config file [default: config.toml].
    #[arg(short, long, global = true, env = "AUTH0_RUDDERSTACK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The config file: the one given, else `config.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.config.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
    }
}

/// How log lines on stderr are written.
#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run as a daemon: poll Auth0, deliver to RudderStack, repeat until SIGTERM or SIGINT.
    Run,
    /// Catch up: fetch until Auth0 has nothing newer, deliver the whole outbox, exit.
    Sync,
    /// Show each tenant's cursor, outbox, dead letters, last fetch and delivery, and checkpoint age.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Only this tenant (its domain).
        #[arg(long, value_name = "DOMAIN")]
        tenant: Option<String>,
    },
    /// Validate the config, get a token, read one log page, authenticate to RudderStack, check the state.
    Check {
        /// Only this tenant (its domain).
        #[arg(long, value_name = "DOMAIN")]
        tenant: Option<String>,
    },
    /// Print the metrics in the Prometheus text format, from the state file alone.
    Metrics,
    /// Transform Auth0 log entries from FILE (or stdin) into RudderStack events on stdout.
    Transform {
        /// A JSON array, one object, NDJSON, Log Streams `{log_id, data}` wrappers or EventBridge events,
        /// optionally gzip-compressed. Stdin when absent.
        file: Option<PathBuf>,
        /// The tenant domain the deterministic ids derive from. Without it, the ids come from the config
        /// given with -c (and its [privacy] rules apply); never from a config that was not asked for.
        #[arg(long, value_name = "DOMAIN")]
        domain: Option<String>,
        /// With -c naming several tenants: which one.
        #[arg(long, value_name = "DOMAIN")]
        tenant: Option<String>,
        /// One compact event per line (NDJSON) instead of a JSON array.
        #[arg(long)]
        ndjson: bool,
    },
    /// Watch the daemon work without credentials: `run` against stand-ins of Auth0 and RudderStack started on
    /// 127.0.0.1, then a check that every entry arrived exactly once (exit 5 if not).
    Demo {
        /// Stop after this long (e.g. 30s, 5m) instead of at Ctrl-C.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// New log entries a second.
        #[arg(long, value_name = "N", default_value_t = 3.0)]
        rate: f64,
        /// Make both stand-ins fail some requests (5xx, 429 with Retry-After, a RudderStack outage).
        #[arg(long)]
        faults: bool,
        /// Print every event RudderStack accepts on stdout, one JSON line each.
        #[arg(long)]
        show_events: bool,
        /// Keep the state, the config and the metrics in DIR (new or empty) instead of a temporary directory.
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
    },
    /// Backfill archived entries (files or `-` for stdin; gzip allowed) into a tenant's outbox.
    Import {
        /// The files: JSON arrays, NDJSON, Log Streams wrappers or EventBridge events, gzip or not.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// The tenant the entries belong to (needed when the config names several).
        #[arg(long, value_name = "DOMAIN")]
        tenant: Option<String>,
        /// Import a file again although it was imported in full before.
        #[arg(long)]
        force: bool,
    },
    /// Inspect and re-queue entries that could not be delivered.
    DeadLetter {
        /// List or retry.
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// After an expired checkpoint with `on_expired_checkpoint = "stop"`: continue from the oldest entry
    /// Auth0 still retains. Stop the daemon first.
    Resume {
        /// The tenant (needed when the config names several).
        #[arg(long, value_name = "DOMAIN")]
        tenant: Option<String>,
    },
    /// Drop the state of a tenant the config no longer names (its undelivered entries and dead letters).
    ForgetTenant {
        /// The tenant's domain.
        #[arg(value_name = "DOMAIN")]
        domain: String,
        /// Confirm that its entries and dead letters are dropped for good.
        #[arg(long)]
        yes: bool,
    },
    /// Write a consistent copy of the state database to PATH (safe while `run` is running).
    Backup {
        /// Where the copy goes; it must not exist yet.
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },
}

/// What `dead-letter` does.
#[derive(Subcommand, Debug)]
pub enum DeadLetterAction {
    /// List dead letters, oldest first.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Only this tenant's.
        #[arg(long, value_name = "DOMAIN")]
        tenant: Option<String>,
    },
    /// Move dead letters back into the outbox (all of them, or the tenant's, when no ID is given).
    Retry {
        /// Dead letter ids, as `list` shows them.
        ids: Vec<i64>,
        /// Only this tenant's.
        #[arg(long, value_name = "DOMAIN")]
        tenant: Option<String>,
    },
}
