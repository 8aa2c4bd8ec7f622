//! The `auth0-rudderstack` command line: parse arguments, set up logging, load the config, call into the
//! library, and turn the outcome into an exit code.
//!
//! Operators script against the commands and exit codes, so they are fixed: 0 success, 1 a runtime failure
//! (Auth0 or RudderStack refused us, `sync` gave up, a `check` failed), 2 a usage or configuration error,
//! 3 a state database that cannot be used (it is never modified), 4 input that is not JSON, 5 a `demo` in
//! which not every entry arrived exactly once, 128 + n a `sync` stopped by signal n before it caught up. Everything else lives in the library (`ops`, `pipeline`).

use std::io::{BufWriter, IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use auth0_rudderstack::cli::{Cli, Command, DeadLetterAction, LogFormat};
use auth0_rudderstack::config::Config;
use auth0_rudderstack::logging::{self, Chain, Format};
use auth0_rudderstack::ops::{self, Error};
use auth0_rudderstack::pipeline::{self, RunMode};
use auth0_rudderstack::{input, store};
use clap::Parser;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match cli.log_format {
        LogFormat::Text => Format::Text,
        LogFormat::Json => Format::Json,
    };
    logging::init(format);
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            logging::final_error(format, &Chain(&e).to_string());
            ExitCode::from(e.exit_code())
        }
    }
}

fn load_config(path: &Path) -> Result<Config, Error> {
    let (config, warnings) = Config::load(path)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    Ok(config)
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Usage(format!("cannot start the async runtime: {e}")))
}

fn dispatch(cli: Cli) -> Result<ExitCode, Error> {
    let path = cli.config_path();
    let mut stdout = std::io::stdout().lock();
    match cli.command {
        Command::Transform { file, domain, tenant, ndjson } => {
            let layout = if ndjson { input::Layout::Ndjson } else { input::Layout::Array };
            transform(file.as_deref(), domain, tenant, cli.config.as_deref(), layout)
        }
        Command::Demo { duration, rate, faults, show_events, state } => {
            // `--show-events` writes from the stand-in's threads: this thread must not hold stdout meanwhile.
            drop(stdout);
            let options = ops::demo::Options {
                duration,
                rate,
                faults,
                show_events,
                state,
                progress_bar: std::io::stderr().is_terminal(),
            };
            demo(options)
        }
        Command::Run => run(load_config(&path)?, RunMode::Daemon),
        Command::Sync => run(load_config(&path)?, RunMode::Sync),
        Command::Status { json, tenant } => {
            let report = ops::status::read(&load_config(&path)?, tenant.as_deref())?;
            if json {
                let _ = writeln!(
                    stdout,
                    "{}",
                    serde_json::to_string_pretty(&ops::status::to_json(&report)).unwrap_or_default()
                );
            } else {
                let _ = write!(stdout, "{}", ops::status::to_text(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { tenant } => {
            let config = load_config(&path)?;
            runtime()?.block_on(ops::check::run(&config, tenant.as_deref(), &mut stdout))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Metrics => {
            let config = load_config(&path)?;
            let text = match store::Store::open_existing(&config.state.path) {
                Ok(mut s) => {
                    let snaps = ops::metrics::snapshots(&config, &mut s)?;
                    ops::metrics::render(&config, &snaps, None)
                }
                Err(store::StoreError::Missing { .. }) => ops::metrics::render(&config, &[], None),
                Err(e) => return Err(e.into()),
            };
            let _ = write!(stdout, "{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Import { files, tenant, force } => {
            import(load_config(&path)?, tenant.as_deref(), &files, force)
        }
        Command::DeadLetter { action } => {
            let config = load_config(&path)?;
            match action {
                DeadLetterAction::List { json, limit, tenant } => {
                    let letters = ops::admin::dead_letters(&config, tenant.as_deref(), limit)?;
                    if json {
                        let _ = writeln!(
                            stdout,
                            "{}",
                            serde_json::to_string_pretty(&letters).unwrap_or_default()
                        );
                    } else if letters.is_empty() {
                        let _ = writeln!(stdout, "no dead letters");
                    } else {
                        let _ = writeln!(stdout, "id\ttenant\tcreated_at\tlog_id\tkept\treason");
                        for d in &letters {
                            // Each field is escaped on its own, so a tab or line break in a reason (which
                            // can quote a file name) cannot make a column or a line of its own.
                            let id = d.id.to_string();
                            let fields: [&str; 6] = [
                                &id,
                                &d.tenant,
                                &d.created_at,
                                d.log_id.as_deref().unwrap_or("-"),
                                if d.withheld { "withheld" } else { "whole" },
                                &d.reason,
                            ];
                            let line: Vec<String> = fields.iter().map(|f| logging::escape(f)).collect();
                            let _ = writeln!(stdout, "{}", line.join("\t"));
                        }
                    }
                }
                DeadLetterAction::Retry { ids, tenant } => {
                    runtime()?.block_on(async {
                        let shutdown = CancellationToken::new();
                        tokio::spawn(signals(shutdown.clone()));
                        ops::admin::retry_dead_letters(
                            &config,
                            tenant.as_deref(),
                            &ids,
                            &shutdown,
                            &mut stdout,
                        )
                        .await
                    })?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Resume { tenant } => {
            let config = load_config(&path)?;
            runtime()?.block_on(ops::admin::resume(&config, tenant.as_deref(), &mut stdout))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ForgetTenant { domain, yes } => {
            ops::admin::forget_tenant(&load_config(&path)?, &domain, yes, &mut stdout)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup { path: dest } => {
            ops::admin::backup(&load_config(&path)?, &dest, &mut stdout)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `transform`: ids from `--domain`, or from the config given explicitly with `-c` (never from a config file
/// that merely happens to be in the working directory), whose `[privacy]` rules then apply too.
fn transform(
    file: Option<&Path>,
    domain: Option<String>,
    tenant: Option<String>,
    config: Option<&Path>,
    layout: input::Layout,
) -> Result<ExitCode, Error> {
    let config = config.map(load_config).transpose()?;
    let chosen = match &config {
        Some(c) => Some(ops::admin::single(c, tenant.as_deref(), "transform")?),
        None if tenant.is_some() => {
            return Err(Error::Usage("--tenant needs the config that names it (-c FILE)".into()));
        }
        None => None,
    };
    let domain = match (domain, chosen) {
        (Some(d), _) => {
            auth0_rudderstack::config::parse_domain(&d).map_err(|m| Error::Usage(format!("--domain: {m}")))?
        }
        (None, Some(t)) => t.domain().to_string(),
        (None, None) => {
            logging::note(
                "note: no --domain given: the ids derive from an empty tenant name, so they will not match the \
                 ids the daemon sends for your tenant",
            );
            String::new()
        }
    };
    let privacy = chosen.and_then(|t| t.privacy.as_ref()).and_then(|p| p.rules()).cloned();
    let limit = chosen.map_or(input::MIN_ENTRY_LIMIT, |t| input::entry_limit(t.rudderstack.max_event_bytes));
    let name = file.map(|f| f.display().to_string()).unwrap_or_else(|| "stdin".into());
    let input: Box<dyn Read> = match file {
        Some(f) => {
            let open_error = |source| Error::Open { path: f.to_path_buf(), source };
            let file = std::fs::File::open(f).map_err(open_error)?;
            // A directory opens, and only its first read fails: said then, it would look like bad input
            // (exit 4) rather than the wrong path on the command line that it is.
            if file.metadata().map_err(open_error)?.is_dir() {
                return Err(open_error(std::io::Error::from_raw_os_error(libc::EISDIR)));
            }
            Box::new(file)
        }
        None => Box::new(std::io::stdin().lock()),
    };
    let stdout = std::io::stdout();
    let out = BufWriter::with_capacity(1 << 20, stdout.lock());
    let mut set_aside = |msg: &input::SetAside| logging::note(&format!("warning: {name}: {msg}"));
    let summary =
        input::transform_stream_as(&domain, privacy.as_deref(), layout, limit, input, out, &mut set_aside)?;
    if summary.set_aside > 0 {
        logging::note(&format!(
            "{name}: {} entries, {} events, {} entries set aside (see the warnings above)",
            summary.entries, summary.events, summary.set_aside
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// `import`: enqueue archived entries, and deliver them unless a running daemon does.
fn import(
    config: Config,
    tenant: Option<&str>,
    files: &[std::path::PathBuf],
    force: bool,
) -> Result<ExitCode, Error> {
    let domain = ops::admin::single(&config, tenant, "import")?.domain().to_string();
    let rt = runtime()?;
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        let options = pipeline::import::Options { force, progress_bar: std::io::stderr().is_terminal() };
        let summary = pipeline::import::import(Arc::new(config), &domain, files, options, shutdown).await?;
        let total = |f: fn(&pipeline::import::FileSummary) -> u64| summary.files.iter().map(f).sum::<u64>();
        let skipped_files = summary.files.iter().filter(|f| f.already_imported).count();
        tracing::info!(
            tenant = %domain,
            files = summary.files.len(),
            skipped_files,
            read = total(|f| f.read),
            enqueued = total(|f| f.enqueued),
            skipped = total(|f| f.duplicates + f.resumed_after),
            filtered = total(|f| f.filtered),
            dead_letters = total(|f| f.dead_lettered),
            delivered = summary.delivered,
            "{}",
            if summary.interrupted {
                "import stopped by signal; run it again to go on where it stopped"
            } else if summary.daemon_delivers {
                "import done; the running daemon delivers what was enqueued"
            } else {
                "import done"
            }
        );
        let signal = SIGNAL.load(Ordering::SeqCst);
        if summary.interrupted && signal > 0 {
            return Ok(ExitCode::from((128 + signal) as u8));
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `demo`: the pipeline against stand-ins until `--duration` or a signal, then the summary; exit 0 only when
/// every entry arrived exactly once.
fn demo(options: ops::demo::Options) -> Result<ExitCode, Error> {
    runtime()?.block_on(async {
        let stop = CancellationToken::new();
        tokio::spawn(signals(stop.clone()));
        let summary = ops::demo::run(options, stop).await?;
        for line in summary.to_text().lines() {
            logging::note(line);
        }
        Ok(if summary.exactly_once() { ExitCode::SUCCESS } else { ExitCode::from(ops::EXIT_DEMO_MISMATCH) })
    })
}

/// The signal that stopped the process, if any (its number).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

fn run(config: Config, mode: RunMode) -> Result<ExitCode, Error> {
    let rt = runtime()?;
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        let options =
            pipeline::Options { progress_bar: mode == RunMode::Sync && std::io::stderr().is_terminal() };
        let result = pipeline::run(Arc::new(config), mode, shutdown.clone(), options).await;
        if mode == RunMode::Daemon {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        }
        let summary = result?;
        let signal = SIGNAL.load(Ordering::SeqCst);
        let how = if summary.interrupted {
            "stopped by signal before catching up; what is fetched stays in the outbox"
        } else if shutdown.is_cancelled() {
            "stopped on signal"
        } else {
            "caught up"
        };
        // The totals come from the state, so they are the figures `status` shows.
        for (t, s) in summary.tenants.iter().zip(&summary.states) {
            tracing::info!(
                tenant = %t.tenant,
                fetched = t.fetched,
                delivered = t.delivered,
                outbox = s.outbox_depth,
                delivered_total = s.delivered_total,
                dead_letters = s.dead_letters,
                "{how}"
            );
        }
        if summary.interrupted && signal > 0 {
            return Ok(ExitCode::from((128 + signal) as u8));
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let number = tokio::select! {
        _ = term.recv() => { tracing::info!(signal = "SIGTERM", "shutting down: finishing the batch in flight"); 15 }
        _ = int.recv() => { tracing::info!(signal = "SIGINT", "shutting down: finishing the batch in flight"); 2 }
    };
    SIGNAL.store(number, Ordering::SeqCst);
    shutdown.cancel();
}
