//! The command line's shape: every command, flag and help text, in one place.
//!
//! It lives in the library rather than in `main.rs` so that the man page and the shell completions are
//! generated from exactly the parser the binary uses (see `examples/`), and so that tests can check it.
//! `main.rs` only dispatches on the parsed value.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Deliver an Auth0 tenant's logs to RudderStack, by pulling them from the Management API.
#[derive(Parser, Debug)]
#[command(name = "auth0-rudderstack", version, about, long_about = None)]
pub struct Cli {
    /// The TOML config file.
    #[arg(short, long, global = true, env = "AUTH0_RUDDERSTACK_CONFIG", default_value = "config.toml")]
    pub config: PathBuf,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
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
    /// Show the cursor, outbox depth, dead letters, last fetch and delivery, and checkpoint age.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Validate the config, get a token, read one log page, and authenticate to RudderStack.
    Check,
    /// Transform Auth0 log entries from FILE (or stdin) into RudderStack events on stdout. Needs no config.
    Transform {
        /// A JSON array, one object, NDJSON, or Log Streams `{log_id, data}` wrappers. Stdin when absent.
        file: Option<PathBuf>,
        /// The tenant domain the deterministic ids derive from; defaults to the config's `auth0.domain`
        /// when a config file is readable, else empty.
        #[arg(long)]
        domain: Option<String>,
    },
    /// Inspect and re-queue entries that could not be delivered.
    DeadLetter {
        /// List or retry.
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// After an expired checkpoint with `on_expired_checkpoint = "stop"`: continue from the oldest entry
    /// Auth0 still retains.
    Resume,
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
    },
    /// Move dead letters back into the outbox (all of them when no ID is given).
    Retry {
        /// Dead letter ids, as `list` shows them.
        ids: Vec<i64>,
    },
}
