//! The `auth0-rudderstack` command line: parse arguments, set up logging, load the config, call into the
//! library, and turn the outcome into an exit code.
//!
//! Operators script against the commands and exit codes, so they are fixed: 0 success, 1 a runtime failure
//! (Auth0 or RudderStack refused us, `sync` gave up, a `check` failed), 2 a usage or configuration error,
//! 3 a state database that cannot be used (it is never modified), 4 `transform` input that is not JSON.

use std::io::{BufWriter, IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use auth0_rudderstack::cli::{Cli, Command, DeadLetterAction, LogFormat};
use auth0_rudderstack::config::{self, Config};
use auth0_rudderstack::pipeline::{self, RunMode};
use auth0_rudderstack::store::{Snapshot, Store, StoreError};
use auth0_rudderstack::{auth0, input, rudderstack};
use chrono::{DateTime, Utc};
use clap::Parser;
use tokio_util::sync::CancellationToken;

const EXIT_FAILURE: u8 = 1;
const EXIT_CONFIG: u8 = 2;
const EXIT_STATE: u8 = 3;
const EXIT_INPUT: u8 = 4;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            let code = exit_code_for(&e);
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Map an error to the documented exit codes by looking at what it is made of.
fn exit_code_for(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.downcast_ref::<config::Error>().is_some() {
            return EXIT_CONFIG;
        }
        if cause.downcast_ref::<StoreError>().is_some() {
            return EXIT_STATE;
        }
        if let Some(p) = cause.downcast_ref::<pipeline::Error>() {
            return if p.is_store() { EXIT_STATE } else { EXIT_FAILURE };
        }
        if cause.downcast_ref::<input::InputError>().is_some() {
            return EXIT_INPUT;
        }
    }
    EXIT_FAILURE
}

fn load_config(path: &Path) -> anyhow::Result<Config> {
    let (config, warnings) = Config::load(path)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    Ok(config)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Transform { file, domain } => transform(file.as_deref(), domain, &cli.config),
        Command::Run => {
            let config = load_config(&cli.config)?;
            runtime()?.block_on(run(config, RunMode::Daemon))
        }
        Command::Sync => {
            let config = load_config(&cli.config)?;
            runtime()?.block_on(run(config, RunMode::Sync))
        }
        Command::Status { json } => status(&load_config(&cli.config)?, json),
        Command::Check => {
            let config = load_config(&cli.config)?;
            runtime()?.block_on(check(&config))
        }
        Command::DeadLetter { action } => dead_letter(&load_config(&cli.config)?, action),
        Command::Resume => {
            let config = load_config(&cli.config)?;
            runtime()?.block_on(resume(&config))
        }
    }
}

fn transform(file: Option<&Path>, domain: Option<String>, config_path: &Path) -> anyhow::Result<ExitCode> {
    // The ids derive from the tenant domain; use the configured one when there is a readable config, so
    // that offline output carries the same ids the daemon sends.
    let domain = domain
        .or_else(|| {
            let text = std::fs::read_to_string(config_path).ok()?;
            let value: toml::Table = toml::from_str(&text).ok()?;
            value.get("auth0")?.get("domain")?.as_str().map(str::to_string)
        })
        .unwrap_or_default();
    let input: Box<dyn Read> = match file {
        Some(f) => Box::new(
            std::fs::File::open(f)
                .map_err(|e| anyhow::anyhow!("cannot open input file {}: {e}", f.display()))?,
        ),
        None => Box::new(std::io::stdin().lock()),
    };
    let stdout = std::io::stdout();
    let out = BufWriter::with_capacity(1 << 20, stdout.lock());
    let name = file.map(|f| f.display().to_string()).unwrap_or_else(|| "stdin".into());
    let mut set_aside = |msg: &input::SetAside| {
        let _ = writeln!(std::io::stderr(), "warning: {name}: {msg}");
    };
    let summary = input::transform_stream(&domain, input, out, &mut set_aside)
        .with_context(|| format!("cannot transform {name}"))?;
    if summary.set_aside > 0 {
        let _ = writeln!(
            std::io::stderr(),
            "{name}: {} entries, {} events, {} entries set aside (see the warnings above)",
            summary.entries,
            summary.events,
            summary.set_aside
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn run(config: Config, mode: RunMode) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    let daemon = mode == RunMode::Daemon;
    if daemon {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        if let Some(interval) = sd_notify::watchdog_enabled() {
            tokio::spawn(watchdog(interval / 2, shutdown.clone()));
        }
        tracing::info!(
            tenant = %config.auth0.domain,
            state = %config.state.path.display(),
            poll_interval = %humantime::format_duration(config.auth0.poll_interval),
            "started"
        );
    }
    let result = pipeline::run(config, mode, shutdown.clone()).await;
    if daemon {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    }
    let summary = result?;
    tracing::info!(
        fetched = summary.fetched,
        filtered = summary.filtered,
        delivered = summary.delivered,
        dead_letters = summary.dead_lettered,
        requests = summary.pages,
        "{}",
        if shutdown.is_cancelled() { "stopped on signal" } else { "caught up" }
    );
    Ok(ExitCode::SUCCESS)
}

async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down: finishing the batch in flight"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down: finishing the batch in flight"),
    }
    shutdown.cancel();
}

async fn watchdog(every: Duration, shutdown: CancellationToken) {
    loop {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

fn age(date: Option<&str>) -> Option<chrono::Duration> {
    let t = DateTime::parse_from_rfc3339(date?).ok()?.with_timezone(&Utc);
    Some(Utc::now() - t)
}

fn human(d: chrono::Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.num_seconds().max(0) as u64)).to_string()
}

fn status(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let tenant = &config.auth0.domain;
    let snapshot = match Store::open_existing(&config.state.path, tenant) {
        Ok(store) => Some(store.snapshot()?),
        Err(StoreError::Missing { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let mut warnings = Vec::new();
    let checkpoint_age = snapshot.as_ref().and_then(|s| age(s.cursor_date.as_deref()));
    let retention = chrono::Duration::from_std(config.auth0.retention).unwrap_or(chrono::Duration::MAX);
    if let Some(a) = checkpoint_age
        && a > retention / 2
    {
        warnings.push(format!(
            "the checkpoint is {} old, more than half of auth0.retention ({}): entries older than the retention are lost if it is not caught up",
            human(a),
            humantime::format_duration(config.auth0.retention)
        ));
    }
    if let Some(s) = &snapshot {
        if s.stopped {
            warnings.push(
                "fetching is stopped after an expired checkpoint; run `auth0-rudderstack resume`".into(),
            );
        }
        if s.dead_letters > 0 {
            warnings.push(format!(
                "{} dead letters: see `auth0-rudderstack dead-letter list`, re-queue with `dead-letter retry`",
                s.dead_letters
            ));
        }
        if let Some(g) = &s.last_gap {
            warnings.push(format!("gap detected at {}: {}", g.detected_at, g.detail));
        }
    }
    if json {
        let value = serde_json::json!({
            "tenant": tenant,
            "state_path": config.state.path,
            "state_exists": snapshot.is_some(),
            "cursor": snapshot.as_ref().and_then(|s| s.cursor.clone()),
            "cursor_date": snapshot.as_ref().and_then(|s| s.cursor_date.clone()),
            "checkpoint_age_seconds": checkpoint_age.map(|a| a.num_seconds()),
            "retention_seconds": config.auth0.retention.as_secs(),
            "outbox_depth": snapshot.as_ref().map_or(0, |s| s.outbox_depth),
            "dead_letters": snapshot.as_ref().map_or(0, |s| s.dead_letters),
            "last_fetch_at": snapshot.as_ref().and_then(|s| s.last_fetch_at.clone()),
            "last_delivery_at": snapshot.as_ref().and_then(|s| s.last_delivery_at.clone()),
            "delivered_total": snapshot.as_ref().map_or(0, |s| s.delivered_total),
            "filtered_total": snapshot.as_ref().map_or(0, |s| s.filtered_total),
            "fetching_stopped": snapshot.as_ref().is_some_and(|s| s.stopped),
            "last_gap": snapshot.as_ref().and_then(|s| s.last_gap.clone()),
            "warnings": warnings,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    print_status(config, snapshot.as_ref(), checkpoint_age, &warnings);
    Ok(ExitCode::SUCCESS)
}

fn print_status(
    config: &Config,
    s: Option<&Snapshot>,
    checkpoint_age: Option<chrono::Duration>,
    warnings: &[String],
) {
    let when = |t: Option<&String>| match t {
        Some(t) => match age(Some(t)) {
            Some(a) => format!("{t} ({} ago)", human(a)),
            None => t.clone(),
        },
        None => "never".into(),
    };
    println!("tenant:          {}", config.auth0.domain);
    println!("state:           {}", config.state.path.display());
    let Some(s) = s else {
        println!("                 (no state yet: `sync` or `run` creates it)");
        return;
    };
    match (&s.cursor, checkpoint_age) {
        (Some(c), Some(a)) => {
            println!("cursor:          {c} ({}, {} old)", s.cursor_date.as_deref().unwrap_or("?"), human(a))
        }
        (Some(c), None) => println!("cursor:          {c}"),
        (None, _) => println!("cursor:          none (starts from auth0.start)"),
    }
    println!("outbox:          {} entries waiting", s.outbox_depth);
    println!("dead letters:    {}", s.dead_letters);
    println!("last fetch:      {}", when(s.last_fetch_at.as_ref()));
    println!("last delivery:   {}", when(s.last_delivery_at.as_ref()));
    println!(
        "delivered:       {} events in all, {} entries filtered out",
        s.delivered_total, s.filtered_total
    );
    for w in warnings {
        println!("warning: {w}");
    }
}

async fn check(config: &Config) -> anyhow::Result<ExitCode> {
    let mut failed = Vec::new();
    println!("ok      config: {}", config.path.display());
    match auth0::Client::new(&config.auth0) {
        Ok(client) => match client.ensure_token().await {
            Ok(()) => {
                println!("ok      auth0 token: issued for client_id {}", config.auth0.client_id);
                match client.probe().await {
                    Ok(n) => println!(
                        "ok      auth0 logs: /api/v2/logs answered with {n} entr{} (read:logs is granted)",
                        if n == 1 { "y" } else { "ies" }
                    ),
                    Err(e) => {
                        println!("FAILED  auth0 logs: {e}");
                        failed.push("auth0 logs");
                    }
                }
            }
            Err(e) => {
                println!("FAILED  auth0 token: {e}");
                failed.push("auth0 token");
                println!("skipped auth0 logs: needs a token");
            }
        },
        Err(e) => {
            println!("FAILED  auth0 token: {e}");
            failed.push("auth0 token");
        }
    }
    match rudderstack::Sink::new(&config.rudderstack) {
        Ok(sink) => match sink.check().await {
            Ok(()) => {
                println!("ok      rudderstack: write key accepted by {}", config.rudderstack.data_plane_url)
            }
            Err(e) => {
                println!("FAILED  rudderstack: {e}");
                failed.push("rudderstack");
            }
        },
        Err(e) => {
            println!("FAILED  rudderstack: {e}");
            failed.push("rudderstack");
        }
    }
    match Store::open_existing(&config.state.path, &config.auth0.domain) {
        Ok(_) => println!("ok      state: {}", config.state.path.display()),
        Err(StoreError::Missing { .. }) => {
            println!("ok      state: {} will be created on first run", config.state.path.display())
        }
        Err(e) => {
            println!("FAILED  state: {e}");
            failed.push("state");
        }
    }
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: {} check(s) failed: {}", failed.len(), failed.join(", "));
        Ok(ExitCode::from(EXIT_FAILURE))
    }
}

fn dead_letter(config: &Config, action: DeadLetterAction) -> anyhow::Result<ExitCode> {
    match action {
        DeadLetterAction::List { json, limit } => {
            let letters = match Store::open_existing(&config.state.path, &config.auth0.domain) {
                Ok(store) => store.dead_letters(limit)?,
                Err(StoreError::Missing { .. }) => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else if letters.is_empty() {
                println!("no dead letters");
            } else {
                println!("id\tcreated_at\tlog_id\treason");
                for d in &letters {
                    println!(
                        "{}\t{}\t{}\t{}",
                        d.id,
                        d.created_at,
                        d.log_id.as_deref().unwrap_or("-"),
                        d.reason
                    );
                }
            }
        }
        DeadLetterAction::Retry { ids } => {
            let mut store = Store::open(&config.state.path, &config.auth0.domain)?;
            let moved = store.retry_dead_letters(&ids)?;
            println!("{moved} dead letters moved back to the outbox");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn resume(config: &Config) -> anyhow::Result<ExitCode> {
    let client = auth0::Client::new(&config.auth0)?;
    let found = client.bootstrap(&config::Start::Oldest).await?;
    let mut store = Store::open(&config.state.path, &config.auth0.domain)?;
    let commit = pipeline::resume_commit(found, &config.auth0.log_types);
    let cursor = commit.cursor.as_ref().map(|c| c.log_id.clone());
    store.commit_page(&commit)?;
    store.resume_fetching()?;
    println!(
        "fetching resumes from the oldest retained entry ({})",
        cursor.as_deref().unwrap_or("the tenant has no entries yet")
    );
    Ok(ExitCode::SUCCESS)
}
