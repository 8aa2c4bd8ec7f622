//! `import`: archived entries (Log Streams exports, EventBridge archives, old dumps; gzip or not) into a
//! tenant's outbox, delivered by the same sender with the same rules as fetched entries: the same ids, privacy
//! rules, filters, dead letters, batching and retries. The cursor is never touched.
//!
//! Who delivers: the state lock decides. If no daemon holds it, `import` takes it and delivers what it
//! enqueues itself, with a sender running while the files are read, and ends once the outbox is empty (as
//! `sync` does); a `run` started meanwhile is refused by the lock. If a daemon holds it, `import` only
//! enqueues, and the daemon's sender (woken by the outbox watcher, `pipeline::watch`) delivers. Only the lock
//! holder ever sends, so no row is delivered twice by the two.
//!
//! Every input is opened exactly once, without blocking: a second open of a pipe, a FIFO or a process
//! substitution would find other bytes or none. A regular file is identified by its content (a hash of its
//! first MiB, read at offsets, and its size), and the number of its entries read and settled is committed in
//! the same transaction as the rows they produced. Run again, an interrupted import skips those entries (the
//! reader delimits them without parsing) and goes on; a file imported in full is skipped unless `--force`.
//! Anything else (stdin, a FIFO, `<(…)`) is a stream: read once as it comes, through waits that a signal
//! ends, and never resumed by offset, since nothing can recognise it again. An entry whose `log_id` is
//! already waiting in the outbox is not enqueued again; one delivered before goes again under the same ids.
//! Reading streams in batches, and an entry over the entry limit is set aside as it is read (see
//! `input::entry_limit`), so memory stays flat whatever the file or one entry holds.

use std::io::{ErrorKind, IsTerminal, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::lock::{Holder, StateLock, Waited};
use super::retry::RetryPolicy;
use super::sender::Sender;
use super::{Error, RunMode, TenantRun};
use crate::config::Config;
use crate::entry::{self, LogId};
use crate::input::{EntryReader, SetAside};
use crate::store::{ImportProgress, Kept, NewDeadLetter, NewEntry, Store, StoreError};

/// Entries per transaction, at most: the reader ends a batch sooner once it holds a few MiB of entries.
const BATCH: usize = 2_000;
/// How much of a file identifies it.
const ID_BYTES: usize = 1 << 20;

/// What happened to one file.
#[derive(Debug, Clone, Default)]
pub struct FileSummary {
    /// Skipped whole: it was imported in full before.
    pub already_imported: bool,
    /// Entries read in this run (not counting those skipped to resume).
    pub read: u64,
    /// Entries skipped because an earlier, interrupted import had settled them.
    pub resumed_after: u64,
    /// Entries put into the outbox.
    pub enqueued: u64,
    /// Entries not enqueued because the same `log_id` was already waiting in the outbox.
    pub duplicates: u64,
    /// Entries the filters kept back.
    pub filtered: u64,
    /// Entries set aside as dead letters.
    pub dead_lettered: u64,
}

/// What an import did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Per file.
    pub files: Vec<FileSummary>,
    /// Events delivered by this process (0 when a running daemon delivers).
    pub delivered: u64,
    /// Whether a running daemon delivers (this process only enqueued).
    pub daemon_delivers: bool,
    /// Whether a shutdown signal ended the import early.
    pub interrupted: bool,
}

/// Options of an import that are not in the config.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Import files again that were imported in full before.
    pub force: bool,
    /// Draw a progress bar (a terminal) instead of progress lines.
    pub progress_bar: bool,
}

/// Import `files` (a path, or `-` for stdin) into `tenant`'s outbox, and deliver them unless a daemon does.
pub async fn import(
    config: Arc<Config>,
    tenant: &str,
    files: &[PathBuf],
    options: Options,
    shutdown: CancellationToken,
) -> Result<Summary, Error> {
    let t =
        config.tenant(tenant).ok_or_else(|| Error::Internal(format!("{tenant} is not configured")))?.clone();
    // Only the lock holder sends. A running daemon delivers what is queued here; any other holder (another
    // `import`, a `sync`, a `resume`) may end before these rows are queued, so wait for it and deliver.
    let waited = StateLock::acquire_unless(
        &config.state.path,
        "import",
        |h| h.is_some_and(Holder::is_daemon),
        &shutdown,
    )
    .await?;
    let lock = match waited {
        Waited::Taken(lock) => Some(lock),
        Waited::Held(holder) => {
            tracing::info!(tenant = %tenant, "{} is using this state: the entries are only enqueued, and it delivers them", super::lock::named(holder.as_ref()));
            None
        }
        Waited::Cancelled => return Ok(Summary { interrupted: true, ..Summary::default() }),
    };
    // The state is opened here, once; the sender's connection is made from this one.
    let path = config.state.path.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&path))
        .await
        .map_err(|e| Error::Internal(format!("opening the state database: {e}")))??;
    store.set_synchronous(config.state.synchronous)?;

    // The sender, when this process delivers: the one the daemon runs, in `sync` mode, ending once the
    // outbox is empty and the files are read.
    let mut delivery = None;
    let run = if lock.is_some() {
        let send = store.connection()?;
        send.set_synchronous(config.state.synchronous)?;
        let send_store = crate::store::Handle::spawn(send, "state-send")?;
        let telemetry = crate::telemetry::Telemetry::new();
        let clients = crate::http::Clients::default();
        let activity = Arc::default();
        let run =
            super::tenant_run(&config, &t, &clients, &telemetry, &activity, &send_store, &send_store).await?;
        let run = Arc::new(run);
        let sender = Sender::new(run.clone(), send_store.clone(), RunMode::Sync);
        let policy = RetryPolicy::new(&config.retry, RunMode::Sync);
        let (r, stop, down) = (run.clone(), shutdown.child_token(), shutdown.clone());
        delivery = Some(tokio::spawn(super::send_loop(sender, r, send_store, policy, stop, down)));
        Some(run)
    } else {
        None
    };

    let stop = Arc::new(AtomicBool::new(false));
    let watch = {
        let (stop, shutdown) = (stop.clone(), shutdown.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            stop.store(true, Ordering::SeqCst);
        })
    };
    let progress = Arc::new(Progress::default());
    // Cancelled when the import ends, so the reporter stops at once rather than at its next tick.
    let finished = shutdown.child_token();
    let reporter =
        tokio::spawn(report(progress.clone(), run.clone(), options.progress_bar, finished.clone()));
    let reader = {
        let (config, files, stop, progress, run) =
            (config.clone(), files.to_vec(), stop.clone(), progress.clone(), run.clone());
        let tenant = t.clone();
        tokio::task::spawn_blocking(move || {
            read_files(store, &config, &tenant, &files, options, &stop, &progress, run.as_deref())
        })
    };
    let read = reader.await.map_err(|e| Error::Internal(format!("the import reader failed: {e}")))?;
    if let Some(run) = &run {
        run.fetch_done.store(true, Ordering::SeqCst);
        run.wake_sender.notify_one();
    }
    // A read that failed still leaves what was enqueued before it; deliver that, then report the failure.
    let delivered = match delivery {
        Some(task) => {
            let result = task.await.map_err(|e| Error::Internal(format!("the import sender failed: {e}")))?;
            let delivered = run.as_ref().map_or(0, |r| r.counters.delivered.load(Ordering::Relaxed));
            if read.is_ok() {
                result?;
            }
            delivered
        }
        None => 0,
    };
    watch.abort();
    finished.cancel();
    let _ = reporter.await;
    drop(lock);
    let files = read?;
    Ok(Summary { files, delivered, daemon_delivers: run.is_none(), interrupted: shutdown.is_cancelled() })
}

/// Figures the reporter shows, updated by the reading thread.
#[derive(Default)]
struct Progress {
    file: std::sync::Mutex<String>,
    bytes: Arc<AtomicU64>,
    size: AtomicU64,
    read: AtomicU64,
    enqueued: AtomicU64,
}

/// Read every file on this (blocking) thread, committing batch by batch.
#[allow(clippy::too_many_arguments)]
fn read_files(
    mut store: Store,
    config: &Config,
    tenant: &crate::config::Tenant,
    files: &[PathBuf],
    options: Options,
    stop: &AtomicBool,
    progress: &Progress,
    run: Option<&TenantRun>,
) -> Result<Vec<FileSummary>, Error> {
    let rewrite = super::privacy_rewrite(tenant);
    let limit = crate::input::entry_limit(tenant.rudderstack.max_event_bytes);
    let mut summaries = Vec::new();
    for file in files {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let name = file.display().to_string();
        let Opened { input, id: file_id, size } = open(file, stop)?;
        *progress.file.lock().unwrap_or_else(|p| p.into_inner()) = name.clone();
        progress.size.store(size, Ordering::Relaxed);
        progress.bytes.store(0, Ordering::Relaxed);
        let mut summary = FileSummary::default();
        let domain = tenant.domain();
        let mut resume = 0;
        if let Some(id) = &file_id {
            if options.force {
                store.reset_import(domain, id)?;
            }
            match store.import_progress(domain, id)? {
                Some(p) if p.complete => {
                    tracing::info!(file = %name, entries = p.entries, "imported in full before; skipped (use --force to import it again)");
                    summary.already_imported = true;
                    summaries.push(summary);
                    continue;
                }
                Some(p) => {
                    tracing::info!(file = %name, after = p.entries, "resuming an interrupted import");
                    resume = p.entries;
                }
                None => {}
            }
        }
        summary.resumed_after = resume;
        let counted = Counted { inner: input, bytes: progress.bytes.clone() };
        let mut reader = EntryReader::new(counted, BATCH).limited_to(limit).skipping(resume);
        loop {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            wait_for_room(&store, domain, config.state.max_outbox_entries, stop, run)?;
            let batch = match reader.next_batch() {
                Ok(Some(batch)) => batch,
                Ok(None) => break,
                // A signal ends a wait for a pipe's next bytes this way: what was read before it is
                // committed (the batch before the error came first), the rest is read next time.
                Err(_) if stop.load(Ordering::SeqCst) => break,
                Err(source) => return Err(Error::Input { file: name, source }),
            };
            let mut entries = Vec::with_capacity(batch.len());
            let mut dead = Vec::new();
            let mut filtered = 0;
            for item in batch {
                summary.read += 1;
                match item {
                    // Too large to hold: only what was measured while it streamed past is kept, and no
                    // excerpt at all under privacy rules (a cut-off excerpt cannot be rewritten reliably).
                    Err(SetAside { oversized: Some(big), index, offset, error, .. }) => {
                        dead.push(NewDeadLetter {
                            log_id: big.log_id.as_deref().and_then(|id| LogId::parse(id).ok()),
                            kept: Kept::Withheld {
                                size: big.size,
                                sha256: big.sha256,
                                excerpt: if rewrite.is_some() { String::new() } else { big.excerpt },
                            },
                            reason: format!("{name} entry {index} (byte {offset}): {error}"),
                        })
                    }
                    Err(set_aside) => dead.push(NewDeadLetter {
                        log_id: None,
                        kept: super::fetcher::kept(
                            set_aside.text.as_deref().unwrap_or_default(),
                            rewrite.as_deref(),
                        ),
                        reason: format!("{name}: {set_aside}"),
                    }),
                    Ok(e) => {
                        let head = entry::read_head(&e.raw);
                        let own = head.as_ref().ok().and_then(|h| h.log_id.as_ref().ok().cloned());
                        let log_id = match e.log_id.as_deref().map(LogId::parse) {
                            Some(Ok(id)) => Some(id),
                            Some(Err(_)) => None,
                            None => own,
                        };
                        let (kind, client) = match &head {
                            Ok(h) => (h.kind.clone(), h.client_id.clone()),
                            Err(_) => (None, None),
                        };
                        let raw = match rewrite.as_deref().map(|f| f(&e.raw)) {
                            Some(Ok(r)) => r,
                            Some(Err(why)) => {
                                dead.push(NewDeadLetter {
                                    log_id,
                                    kept: Kept::withheld(e.raw.as_bytes(), String::new()),
                                    reason: format!(
                                        "{name} entry {} (byte {}): the privacy rules cannot be applied: {why}",
                                        e.index, e.offset
                                    ),
                                });
                                continue;
                            }
                            None => e.raw,
                        };
                        let Some(log_id) = log_id else {
                            dead.push(NewDeadLetter {
                                log_id: None,
                                kept: Kept::Whole(raw),
                                reason: format!(
                                    "{name} entry {} (byte {}): no valid log_id",
                                    e.index, e.offset
                                ),
                            });
                            continue;
                        };
                        if !tenant.auth0.filter.keeps(kind.as_deref(), client.as_deref()) {
                            filtered += 1;
                            continue;
                        }
                        entries.push(NewEntry { log_id, raw });
                    }
                }
            }
            let read_so_far =
                ImportProgress { entries: reader.summary().entries, enqueued: 0, complete: false };
            let offered = entries.len() as u64;
            let committed = match &file_id {
                Some(id) => store.import_batch(domain, id, &name, &entries, &dead, filtered, &read_so_far)?,
                // Standard input has no identity to resume by; its rows still go in one transaction a batch.
                None => {
                    store.import_batch(domain, "stdin", &name, &entries, &dead, filtered, &read_so_far)?
                }
            };
            summary.enqueued += committed.entries;
            summary.duplicates += offered - committed.entries;
            summary.filtered += filtered;
            summary.dead_lettered += committed.dead_letters.len() as u64;
            progress.read.fetch_add(offered + filtered + dead.len() as u64, Ordering::Relaxed);
            progress.enqueued.fetch_add(committed.entries, Ordering::Relaxed);
            if let Some(run) = run {
                run.counters.add_fetched(committed.entries);
                run.wake_sender.notify_one();
            }
        }
        let complete = !stop.load(Ordering::SeqCst);
        let last = ImportProgress {
            entries: reader.summary().entries,
            enqueued: 0,
            complete: complete && file_id.is_some(),
        };
        let id = file_id.as_deref().unwrap_or("stdin");
        store.import_batch(domain, id, &name, &[], &[], 0, &last)?;
        if file_id.is_none() {
            store.reset_import(domain, "stdin")?;
        }
        tracing::info!(
            file = %name,
            read = summary.read,
            enqueued = summary.enqueued,
            duplicates = summary.duplicates,
            filtered = summary.filtered,
            dead_letters = summary.dead_lettered,
            "{}",
            if complete { "file read" } else { "stopped by signal; run the import again to go on" }
        );
        summaries.push(summary);
    }
    Ok(summaries)
}

/// Hold the reader while the outbox is full, as the fetcher does, so an archive never bloats the state.
fn wait_for_room(
    store: &Store,
    tenant: &str,
    max: u64,
    stop: &AtomicBool,
    run: Option<&TenantRun>,
) -> Result<(), StoreError> {
    let mut said = false;
    while store.outbox_depth(tenant)? >= max && !stop.load(Ordering::SeqCst) {
        if !said {
            tracing::info!(
                tenant,
                max_outbox_entries = max,
                "the outbox is full; reading waits until it has room"
            );
            said = true;
        }
        if let Some(run) = run {
            run.wake_sender.notify_one();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn open_error(file: &Path, source: std::io::Error) -> Error {
    Error::File { path: file.to_path_buf(), source }
}

/// An input as opened, once: a regular file with its identity, or a stream read once as it comes.
struct Opened<'a> {
    input: Box<dyn Read + 'a>,
    /// A regular file's identity (see [`identify`]); a stream has none, so it is never resumed by offset.
    id: Option<String>,
    /// A regular file's size, for the progress; 0 for a stream.
    size: u64,
}

/// Open `file` (`-` for stdin) exactly once: a second open of a pipe, a FIFO or `<(…)` would find other bytes
/// or none. Without blocking: a FIFO nobody writes yet opens at once, and the wait for its bytes is a
/// [`Stream`]'s, which a signal ends.
fn open<'a>(file: &Path, stop: &'a AtomicBool) -> Result<Opened<'a>, Error> {
    if file.as_os_str() == "-" {
        // A duplicate of the descriptor: reading it needs no lock on stdin, and its flags stay as they are.
        let fd = std::io::stdin().as_fd().try_clone_to_owned().map_err(|source| open_error(file, source))?;
        return Ok(Opened { input: Box::new(Stream { file: fd.into(), stop }), id: None, size: 0 });
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK | libc::O_NOCTTY);
    let f = options.open(file).map_err(|source| open_error(file, source))?;
    let meta = f.metadata().map_err(|source| open_error(file, source))?;
    // A directory opens, and only its first read fails: said then, it would look like bad input (exit 4)
    // rather than the wrong path on the command line that it is.
    if meta.is_dir() {
        return Err(open_error(file, std::io::Error::from_raw_os_error(libc::EISDIR)));
    }
    if meta.file_type().is_file() {
        // O_NONBLOCK means nothing to a regular file: its reads are as usual.
        let id = identify(&f, meta.len()).map_err(|source| open_error(file, source))?;
        return Ok(Opened { input: Box::new(f), id: Some(id), size: meta.len() });
    }
    Ok(Opened { input: Box::new(Stream { file: f, stop }), id: None, size: 0 })
}

/// A regular file's identity: SHA-256 of its first MiB (as stored, compressed or not) and its size. Read
/// at offsets, so the read that follows still starts at the beginning.
fn identify(f: &std::fs::File, size: u64) -> std::io::Result<String> {
    let mut head = vec![0; ID_BYTES];
    let mut len = 0;
    while len < ID_BYTES {
        match f.read_at(&mut head[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let digest = Sha256::digest(&head[..len]);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("sha256:{hex}:{size}"))
}

/// How long a wait for a stream's bytes goes before looking at the stop flag again.
const STREAM_POLL: u16 = 100;

/// A pipe, FIFO, socket or terminal, read as its bytes come: each read first waits (in slices of
/// `STREAM_POLL` ms) until there are bytes or the writer is gone, so that a signal ends the wait. A
/// FIFO opened before any writer reads as the end of input until one comes; `poll` tells the two apart (it
/// reports a hang-up only once a writer has come and gone).
struct Stream<'a> {
    file: std::fs::File,
    stop: &'a AtomicBool,
}

impl Read for Stream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("stopped by signal"));
            }
            let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(STREAM_POLL)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
            match self.file.read(buf) {
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                other => return other,
            }
        }
    }
}

/// A reader that counts the bytes read through it (for the progress of a file of known size).
struct Counted<R> {
    inner: R,
    bytes: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Report the import's progress: a line every 10 s, or a bar on a terminal.
async fn report(progress: Arc<Progress>, run: Option<Arc<TenantRun>>, bar: bool, stop: CancellationToken) {
    let started = Instant::now();
    let bar = (bar && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::with_draw_target(Some(1), indicatif::ProgressDrawTarget::stderr());
        b.set_style(
            indicatif::ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {percent:>3}% {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b
    });
    let tick = if bar.is_some() { Duration::from_millis(250) } else { super::progress::REPORT_EVERY };
    let mut last_read = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(tick) => {}
        }
        let file = progress.file.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (bytes, size) = (progress.bytes.load(Ordering::Relaxed), progress.size.load(Ordering::Relaxed));
        let read = progress.read.load(Ordering::Relaxed);
        let enqueued = progress.enqueued.load(Ordering::Relaxed);
        let delivered = run.as_ref().map_or(0, |r| r.counters.delivered.load(Ordering::Relaxed));
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let rate = read as f64 / secs;
        let share = if size > 0 { (bytes as f64 / size as f64).min(1.0) } else { 0.0 };
        let eta = if share > 0.0 && share < 1.0 {
            super::progress::human(Duration::from_secs_f64(secs / share * (1.0 - share)))
        } else {
            "unknown".into()
        };
        let delivered_text =
            if run.is_some() { delivered.to_string() } else { "by the running daemon".to_string() };
        match &bar {
            Some(b) => {
                b.set_length(size.max(1));
                b.set_position(bytes.min(size.max(1)));
                b.set_prefix(file.clone());
                b.set_message(format!(
                    "read={read} enqueued={enqueued} delivered={delivered_text} rate={rate:.0}/s eta={eta}"
                ));
            }
            None if read != last_read => {
                tracing::info!(
                    file = %file,
                    "import progress: read={read} enqueued={enqueued} delivered={delivered_text} rate={rate:.0}/s \
                     done={:.0}% eta={eta}",
                    share * 100.0
                );
            }
            None => {}
        }
        last_read = read;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}
